"""Tiny Shakespeare as a naturally federated next-character task: one client per speaker.

The text ships with the package (``tinyshakespeare.txt.xz``, 1,115,394 bytes decompressed,
md5 :data:`TEXT_MD5`). Each speech is a block separated by a blank line whose first line
is ``SPEAKER:``. Speeches with an empty body (ten ``Ghost of ...:`` cues) are skipped,
leaving 299 speakers and 7,097 speeches.

Format (decisions; see also ``README.md``):

* A speaker's text is the concatenation of the bodies of its speeches (the ``NAME:``
  line removed, each body followed by a newline), in play order.
* Train/test split by position inside each speaker (LEAF's "sample" split): the first
  80 % of the speaker's characters are training text, the last 20 % test text, so no
  test character is ever seen in training.
* Samples are non-overlapping windows of ``L + 1`` characters cut from one client's
  training piece (or one speaker's test text): ``x`` the first ``L``, ``y`` the last
  ``L`` (``y[t] = x[t + 1]``). No window crosses a speaker (or a client piece).
* Every position is a target (GPT style): ``L`` targets per window instead of LEAF's one,
  so each training character is used once per pass and a window's loss is the mean over
  its ``L`` positions. The LSTM is scored the same way (it is causal too), which is why
  its accuracy is not LEAF's last-character accuracy (that one sees 79 characters of
  context at every target; ours averages contexts of 0 to 79).
* A speaker whose training text is shorter than ``L + 1`` characters yields no window and
  is not a client (52 of the 299 at ``L = 80``); its test text is dropped too.
"""
from __future__ import annotations

import hashlib
import lzma
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ._dataset import Dataset

__all__ = ["TEXT_MD5", "TEST_FRACTION", "read_text", "parse_speeches", "vocabulary",
           "client_texts", "load_shakespeare"]

TEXT_MD5 = "6fb458f1232090904fb40fe944165e91"
TEST_FRACTION = 0.2
_FILE = Path(__file__).parent / "tinyshakespeare.txt.xz"
_BLOCKS = re.compile(r"\n\s*\n")


def read_text(check: bool = True) -> str:
    """The packaged text, decompressed; with `check`, its md5 is verified.

    Raises
    ------
    FileNotFoundError
        The packaged file is missing (a broken install).
    DataError
        The decompressed text does not have the expected checksum.
    """
    if not _FILE.is_file():
        raise FileNotFoundError(f"the packaged text {_FILE} is missing; reinstall sketchgrad")
    raw = lzma.decompress(_FILE.read_bytes())
    if check and hashlib.md5(raw).hexdigest() != TEXT_MD5:
        raise DataError(f"{_FILE}: decompressed text has md5 {hashlib.md5(raw).hexdigest()}, "
                         f"expected {TEXT_MD5}")
    return raw.decode("ascii")


def parse_speeches(text: str) -> list[tuple[str, str]]:
    """``(speaker, body)`` of every speech with a non-empty body, in text order."""
    out = []
    for block in _BLOCKS.split(text):
        block = block.strip("\n")
        head, _, body = block.partition("\n")
        if not head.endswith(":"):
            raise DataError(f"a speech must start with 'SPEAKER:', got {head[:60]!r}")
        if body.strip():
            out.append((head[:-1], body))
    return out


def vocabulary(text: str) -> str:
    """The sorted distinct characters of `text` (65 for the packaged text)."""
    return "".join(sorted(set(text)))


def _pieces(n, max_chars):
    """Near-equal consecutive piece bounds of ``n`` characters, each at most ``max_chars``."""
    count = 1 if max_chars is None else -(-n // max_chars)
    edges = np.linspace(0, n, count + 1).round().astype(np.int64)
    return list(zip(edges[:-1], edges[1:]))


def client_texts(speeches, *, seq_len=80, max_chars_per_client=None, min_chars_per_client=None):
    """Clients' training pieces and their speakers' test texts.

    Returns
    -------
    clients : list of (speaker, train_piece)
        One entry per client (a speaker, or a piece of one under `max_chars_per_client`),
        speakers in sorted order, each piece long enough for one window.
    tests : list of (speaker, test_text)
        The last 20 % of every speaker that has a client.
    """
    by_speaker = {}
    for speaker, body in speeches:
        by_speaker.setdefault(speaker, []).append(body + "\n")
    clients, tests = [], []
    for speaker in sorted(by_speaker):
        text = "".join(by_speaker[speaker])
        if min_chars_per_client is not None and len(text) < min_chars_per_client:
            continue
        cut = int(len(text) * (1 - TEST_FRACTION))
        pieces = [text[a:b] for a, b in _pieces(cut, max_chars_per_client)]
        pieces = [p for p in pieces if len(p) > seq_len]
        if pieces:
            clients.extend((speaker, p) for p in pieces)
            tests.append((speaker, text[cut:]))
    return clients, tests


def _windows(codes, seq_len):
    """Non-overlapping (x, y) windows of one piece's codes, y shifted by one."""
    n = (len(codes) - 1) // seq_len
    return codes[:n * seq_len].reshape(n, seq_len), codes[1:n * seq_len + 1].reshape(n, seq_len)


def _check_option(name, value, low):
    """An optional int option, >= low."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"shakespeare: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def load_shakespeare(*, seq_len=80, max_chars_per_client=None, min_chars_per_client=None,
                     max_test_sequences=None) -> Dataset:
    """Tiny Shakespeare, one client per speaker (see the module docstring for the format).

    Parameters
    ----------
    seq_len : int, default 80
        ``L``, the window length (LEAF's 80).
    max_chars_per_client : int, optional
        Cut a speaker's training text into near-equal consecutive pieces of at most this
        many characters, one client each (more, smaller clients). At least ``seq_len + 1``.
    min_chars_per_client : int, optional
        Keep only speakers with at least this many characters (train and test together).
    max_test_sequences : int, optional
        Keep this many test windows, evenly spaced over the test set (a cheaper evaluation).

    Returns
    -------
    Dataset
        ``x`` int64 ``(N, L)`` tokens, ``y`` int64 ``(N, L)`` next tokens, ``num_classes``
        the vocabulary size, ``writers_train`` the client id of every window, ``vocab``
        the characters of the token ids.

    Raises
    ------
    ConfigError
        A bad option, or options that leave no client or no test window.
    """
    seq_len = _check_option("seq_len", seq_len, 1)
    if seq_len is None:
        raise ConfigError("shakespeare: seq_len must be an integer >= 1, got None")
    max_chars = _check_option("max_chars_per_client", max_chars_per_client, seq_len + 1)
    min_chars = _check_option("min_chars_per_client", min_chars_per_client, 1)
    max_test = _check_option("max_test_sequences", max_test_sequences, 1)
    text = read_text()
    vocab = vocabulary(text)
    table = np.zeros(128, dtype=np.int64)
    table[np.frombuffer(vocab.encode("ascii"), dtype=np.uint8)] = np.arange(len(vocab))

    def encode(s):
        return table[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]

    clients, tests = client_texts(parse_speeches(text), seq_len=seq_len, max_chars_per_client=max_chars,
                                  min_chars_per_client=min_chars)
    if not clients:
        raise ConfigError(f"shakespeare: no speaker has a training window of seq_len + 1 = {seq_len + 1} "
                          f"characters with min_chars_per_client={min_chars}; lower them")
    xs, ys, writers = [], [], []
    for c, (_, piece) in enumerate(clients):
        x, y = _windows(encode(piece), seq_len)
        xs.append(x)
        ys.append(y)
        writers.append(np.full(len(x), c, dtype=np.int64))
    test = [_windows(encode(t), seq_len) for _, t in tests]
    x_test = np.concatenate([x for x, _ in test])
    y_test = np.concatenate([y for _, y in test])
    if len(x_test) == 0:
        raise ConfigError(f"shakespeare: no speaker's test text (the last {TEST_FRACTION:.0%}) holds a "
                          f"window of {seq_len + 1} characters; lower seq_len")
    if max_test is not None and max_test < len(x_test):
        keep = np.unique(np.linspace(0, len(x_test) - 1, max_test).round().astype(np.int64))
        x_test, y_test = x_test[keep], y_test[keep]
    return Dataset("shakespeare", np.concatenate(xs), np.concatenate(ys), x_test, y_test,
                   num_classes=len(vocab), writers_train=np.concatenate(writers), vocab=vocab)
