"""The shakespeare loader (packaged text, clients = speakers, split by position) and short
federated runs on it: learning below the unigram entropy, bit-identical resume, clear errors."""
import hashlib
import lzma
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import fedsim.data as fdata
from fedsim import ConfigError, Simulation, parse_config
from fedsim.data import load_dataset, partition
from fedsim.data._shakespeare import TEXT_MD5, client_texts, parse_speeches, read_text

PACKAGED = Path(fdata.__file__).parent / "tinyshakespeare.txt.xz"


@pytest.fixture(scope="module")
def text():
    return read_text()


@pytest.fixture(scope="module")
def data():
    return load_dataset("shakespeare", seq_len=40)


def test_packaged_text_checksum():
    raw = lzma.decompress(PACKAGED.read_bytes())
    assert len(raw) == 1_115_394
    assert hashlib.md5(raw).hexdigest() == TEXT_MD5 == "6fb458f1232090904fb40fe944165e91"


def test_speakers_and_speeches(text):
    speeches = parse_speeches(text)
    assert len({s for s, _ in speeches}) == 299
    assert len(speeches) == 7097  # blocks with a body (ten "Ghost of ...:" cues have none)
    # Independent count: a speech is a "NAME:" line after a blank line (or at the start) with text under it.
    lines = text.split("\n")
    heads = [lines[i] for i in range(len(lines) - 1)
             if lines[i].endswith(":") and (i == 0 or lines[i - 1] == "") and lines[i + 1] != ""]
    assert len(heads) == len(speeches)


def _decode(rows, vocab):
    return ["".join(vocab[t] for t in row) for row in rows]


def test_windows_stay_inside_one_speakers_training_text(text, data):
    vocab, L = data.vocab, 40
    assert data.x_train.dtype == np.int64 and data.x_train.shape[1] == L
    np.testing.assert_array_equal(data.x_train[:, 1:], data.y_train[:, :-1])  # y is x shifted by one
    clients, tests = client_texts(parse_speeches(text), seq_len=L)
    assert data.writers_train.max() + 1 == len(clients)
    by_speaker = {}
    for speaker, body in parse_speeches(text):
        by_speaker[speaker] = by_speaker.get(speaker, "") + body + "\n"
    for c, (speaker, piece) in enumerate(clients):
        full = by_speaker[speaker]
        cut = int(len(full) * 0.8)
        assert piece == full[:cut]  # the first 80 %: no test text in training
        rows = np.flatnonzero(data.writers_train == c)
        assert np.all(np.diff(rows) == 1)
        joined = "".join(_decode(data.x_train[rows], vocab)) + vocab[data.y_train[rows[-1], -1]]
        assert joined == piece[:len(joined)] and len(piece) - len(joined) < L  # consecutive, none crosses
    expect_test = []
    for speaker, rest in tests:
        full = by_speaker[speaker]
        assert rest == full[int(len(full) * 0.8):]
        n = (len(rest) - 1) // L
        expect_test += [rest[i * L:(i + 1) * L] for i in range(n)]
    assert _decode(data.x_test, vocab) == expect_test


def test_max_chars_per_client_splits_big_speakers(text, data):
    split = load_dataset("shakespeare", seq_len=40, max_chars_per_client=1000)
    clients, _ = client_texts(parse_speeches(text), seq_len=40, max_chars_per_client=1000)
    assert split.writers_train.max() + 1 == len(clients) > 2 * (data.writers_train.max() + 1)
    assert max(len(p) for _, p in clients) <= 1000
    np.testing.assert_array_equal(split.x_test, data.x_test)  # test text unchanged
    speakers = Counter(s for s, _ in clients)
    assert speakers.most_common(1)[0][1] >= 20  # the biggest speaker became many clients


def test_partitions_natural_and_iid(data):
    natural = partition(data.sample_labels, 50, "natural", seed=0, writers=data.writers_train)
    for part in natural:
        assert len(np.unique(data.writers_train[part])) == 1
    iid = partition(data.sample_labels, 50, "iid", seed=0)
    assert sorted(np.concatenate(iid).tolist()) == list(range(data.num_train))
    assert np.mean([len(np.unique(data.writers_train[p])) for p in iid]) > 10


def _raw(**over):
    raw = {"data": {"dataset": "shakespeare", "partition": "natural", "num_clients": 60, "seq_len": 32,
                    "min_chars_per_client": 3000, "batch_size": 4, "max_test_sequences": 64},
           "model": {"name": "gpt_tiny"},
           "train": {"rounds": 30, "clients_per_round": 6, "lr": 0.3, "eval_every": 10, "weight_decay": 0.0,
                     "threads": 1},
           "rule": {"name": "fetchsgd", "k": 4000, "rows": 3, "cols": 40000, "sketch_backend": "numpy"},
           "output": {"progress": False, "checkpoint_every": 5}}
    for key, value in over.items():
        section, name = key.split("__")
        raw[section][name] = value
    return raw


def test_short_fetchsgd_run_beats_the_unigram_entropy(text):
    (spec,) = parse_config(_raw()).runs()
    sim = Simulation(spec)
    train = sim.dataset.y_train.reshape(-1)
    p = np.bincount(train, minlength=sim.dataset.num_classes) / train.size
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # nats per character
    before, _ = sim.evaluate()
    result = sim.run()
    assert before > unigram
    assert result.final_loss < unigram, (result.final_loss, unigram)
    last = result.history[-1]
    assert last["test_bpc"] == pytest.approx(last["test_loss"] / math.log(2))


def test_resume_mid_run_is_bit_identical(tmp_path):
    (spec,) = parse_config(_raw(train__rounds=8, train__eval_every=4, train__engine="vmap",
                                rule__name="local_topk", rule__k=2000)).runs()
    full = Simulation(spec, out_dir=tmp_path / "full").run()
    first = Simulation(spec, out_dir=tmp_path / "cut")
    for _ in range(5):
        first.step()
    first.save_checkpoint()
    first.step()  # lost in the "crash"
    second = Simulation(spec, out_dir=tmp_path / "cut")
    resumed = second.run(resume=True)
    assert torch.equal(second.params, torch.load(tmp_path / "full" / "final_params.pt"))
    assert resumed.history == full.history
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()


@pytest.mark.parametrize("over,match", [
    ({"data__seq_len": 0}, "data.seq_len must be positive"),
    ({"data__seq_len": -3}, "data.seq_len must be positive"),
    ({"data__max_chars_per_client": 32}, "max_chars_per_client must exceed data.seq_len"),
    ({"data__dataset": "digits"}, "applies to text datasets only"),
])
def test_bad_text_config_values_are_refused(over, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(_raw(**over))


def test_speaker_filter_leaving_no_client_and_unknown_preset():
    (spec,) = parse_config(_raw(data__min_chars_per_client=10**7)).runs()
    with pytest.raises(ConfigError, match="no speaker has a training window"):
        Simulation(spec)
    with pytest.raises(ConfigError, match="seq_len must be an integer >= 1"):
        load_dataset("shakespeare", seq_len=0)
    with pytest.raises(ValueError, match="takes no option"):
        load_dataset("shakespeare", speakers=3)
    with pytest.raises(ConfigError, match="unknown model 'gpt_enormous'"):  # refused with the config
        parse_config(_raw(model__name="gpt_enormous"))
