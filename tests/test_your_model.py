"""A reader's own model: a local folder or hub id anywhere a model is taken, with one-sentence errors."""

import json

import pytest

from lora_course.catalogue import get_model_spec
from lora_course.cli import main
from lora_course.external import write_tiny_checkpoint
from lora_course.lora import count_lora_parameters
from lora_course.model import count_parameters, load_model, load_tokenizer, meta_model, resolve_checkpoint


@pytest.fixture(scope="module")
def neox_folder(tmp_path_factory):
    return write_tiny_checkpoint("gpt_neox", tmp_path_factory.mktemp("neox"))


def test_a_local_folder_is_a_model(neox_folder):
    spec = get_model_spec(str(neox_folder))
    assert (spec.source, resolve_checkpoint(spec)) == ("local", str(neox_folder.resolve()))
    # Shapes from its own config: the meta model counts what the loaded one holds.
    loaded = load_model(str(neox_folder))
    assert type(loaded).__name__ == "GPTNeoXForCausalLM"
    assert count_parameters(meta_model(str(neox_folder))) == count_parameters(loaded)
    # attention = query_key_value (64 -> 192) and dense (64 -> 64) in 2 layers at r = 8.
    assert count_lora_parameters(meta_model(str(neox_folder)), 8, "attention").trainable == 2 * 8 * (64 + 192 + 64 + 64)
    tok = load_tokenizer(str(neox_folder))
    assert (tok.eos_token, tok.pad_token) == ("</s>", "<pad>")


def test_a_hub_id_is_a_model_without_a_download():
    spec = get_model_spec("EleutherAI/pythia-14m")
    assert (spec.source, resolve_checkpoint(spec)) == ("hub", "EleutherAI/pythia-14m")


def test_params_on_a_folder_by_target_set(neox_folder, capsys):
    assert main(["params", "--model", str(neox_folder), "--targets", "mlp", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] == 2 * 8 * ((64 + 128) + (128 + 64))  # dense_h_to_4h and dense_4h_to_h
    assert report["target_modules"] == ["dense_4h_to_h", "dense_h_to_4h"]


def _train(tmp_path, model, capsys):
    results = tmp_path / "results"
    code = main(["train", "--model", str(model), "--experiment", "qlora-r8-qv", "--profile", "smoke",
                 "--results", str(results), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and not results.exists()  # one sentence, nothing written
    assert err.count("\n") == 1
    return err


def test_a_folder_without_config_is_one_sentence(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in _train(tmp_path, tmp_path / "empty", capsys)


def test_an_architecture_without_a_causal_lm_head_is_one_sentence(tmp_path, capsys):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert "'t5' architecture, which has no causal-LM head" in _train(tmp_path, folder, capsys)


def test_a_path_that_is_not_there_is_one_sentence(tmp_path, capsys):
    assert "there is no folder at this path" in _train(tmp_path, tmp_path / "missing" / "model", capsys)


def test_a_fused_architecture_refuses_qv_before_writing(tmp_path, neox_folder, capsys):
    assert "'attention-qv' is not available for GPT-NeoX" in _train(tmp_path, neox_folder, capsys)
