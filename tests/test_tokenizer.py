from transformers import AutoTokenizer

from rakd.models.tokenizer import BOS, EOS, PAD


def test_round_trip_and_specials(tokenizer, tmp_path):
    text = "23+14*2-5=?\n14*2=28; 23+28=51; 51-5=46. A: 46"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert tokenizer.padding_side == "left"


def test_digits_are_single_tokens(tokenizer):
    for number in ["46", "1234567890", " 907", "x=-31"]:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(number, add_special_tokens=False)["input_ids"])
        digit_tokens = [t for t in tokens if any(ch.isdigit() for ch in t)]
        assert all(len(t) == 1 for t in digit_tokens), tokens


def test_unicode_and_unseen_text_round_trip(tokenizer):
    text = "Zoë paid 3€ — 😀 twice?"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_saved_tokenizer_reloads_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Ana has 7 coins. Then Ana gets 3 more."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.padding_side == "left" and again.pad_token == PAD


def test_batch_is_left_padded(tokenizer):
    batch = tokenizer(["1+1=?\n", "12*13-4=?\n"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id
