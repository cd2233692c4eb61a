"""Corpus sources: .txt, folder, .jsonl, builtin:stdlib, and every bad-input error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from muomni.data import corpus_fingerprint, load_documents
from muomni.errors import DataError


def test_txt_splits_on_blank_lines_and_keeps_blocks_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("\n\nfirst line\n\tindented  line\n\n  \n\t\nsecond é 🎉\n\n\nthird\n   \n", encoding="utf-8")
    assert load_documents(str(path)) == ["first line\n\tindented  line", "second é 🎉", "third"]


def test_txt_fixture_round_trips_generated_documents(txt_corpus: Path, docs: list[str]) -> None:
    assert load_documents(str(txt_corpus)) == docs


def test_folder_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for rel, text in [
        ("b.txt", "B"),
        ("a/z.md", "AZ"),
        ("a/b.txt", "AB\n\nstill one document"),
        (".hidden.txt", "hidden file"),
        (".git/config", "hidden folder"),
        ("a/.secret", "hidden nested file"),
        ("c/blank.txt", "  \n\n "),
        ("a-b.txt", "A-B"),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    # Sorted by path components; the whitespace-only file holds nothing to learn and is dropped.
    assert load_documents(str(root)) == ["AB\n\nstill one document", "AZ", "A-B", "B"]


def test_jsonl_reads_text_field_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [{"text": "one\n\ntwo", "id": 1}, {"text": "ünï 你好 \u2028 sep"}, {"text": "three"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]))
    assert load_documents(str(path)) == [r["text"] for r in rows]


def test_a_folders_jsonl_files_are_read_as_json_lines(tmp_path: Path) -> None:
    # They were once read as plain text: the JSON syntax and the {"text": ...} wrappers were trained on.
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("plain\n\nstill one document", encoding="utf-8")
    (root / "b.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n', encoding="utf-8")
    assert load_documents(str(root)) == ["plain\n\nstill one document", "first", "second"]


def test_jsonl_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "one"}\n{"text": "two"}\n')
    assert load_documents(str(path)) == ["one", "two"]


@pytest.mark.parametrize(
    ("bad_line", "phrase"),
    [
        ("{not json", "line 3 is not valid JSON"),
        ('{"content": "x"}', 'line 3 has no string field "text"'),
        ('{"text": 5}', 'line 3 has no string field "text"'),
        ('["text"]', 'line 3 has no string field "text"'),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, phrase: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl") as info:
        load_documents(str(path))
    assert phrase in str(info.value)
    assert "\n" not in str(info.value)


def test_builtin_stdlib_is_large_and_skips_tests() -> None:
    docs = load_documents("builtin:stdlib")
    assert len(docs) > 100
    assert sum(len(d.encode("utf-8")) for d in docs) > 1_000_000
    assert any("def " in d for d in docs)
    assert all(d.strip() for d in docs)


def test_stdlib_file_list_skips_excluded_folders() -> None:
    from muomni.data.corpus import _stdlib_files

    files = _stdlib_files()
    skipped = {"site-packages", "test", "tests", "idlelib", "__pycache__", "tkinter", "ensurepip"}
    assert files == sorted(files, key=lambda p: p.parts)
    assert not [p for p in files if skipped & set(p.parts[-4:-1])]
    assert any(p.name == "os.py" for p in files)


def test_missing_path_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; give a .txt/.jsonl file, a folder, or builtin:stdlib"):
        load_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="does not exist"):
        corpus_fingerprint(str(tmp_path / "nope"))


def test_unknown_builtin() -> None:
    with pytest.raises(DataError, match="unknown built-in corpus 'builtin:shakespeare'"):
        load_documents("builtin:shakespeare")


@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"])
def test_empty_corpus(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="holds no text"):
        load_documents(str(path))


def test_empty_jsonl_and_whitespace_folder_are_empty_corpora(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text('{"text": "  "}\n\n', encoding="utf-8")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text(" \n", encoding="utf-8")
    for source in (tmp_path / "e.jsonl", tmp_path / "ws"):
        with pytest.raises(DataError, match="holds no text"):
            load_documents(str(source))


def test_folder_without_files(tmp_path: Path) -> None:
    root = tmp_path / "nothing"
    (root / "sub" / ".git").mkdir(parents=True)
    (root / ".hidden").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="holds no files"):
        load_documents(str(root))


def test_non_utf8_bytes_are_replaced_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    text = "café ok " * 100
    path.write_bytes(text.encode("utf-8") + b"caf\xe9 and \xff\xfe end")
    with pytest.warns(UserWarning, match=r"latin.txt: 3 bytes were not UTF-8 and were replaced with U\+FFFD") as rec:
        (doc,) = load_documents(str(path))
    assert len([w for w in rec if "not UTF-8" in str(w.message)]) == 1
    assert doc.startswith(text) and doc.endswith("caf\ufffd and \ufffd\ufffd end")


def test_one_percent_invalid_is_the_limit(tmp_path: Path) -> None:
    ok, bad = tmp_path / "ok.txt", tmp_path / "bad.txt"
    ok.write_bytes(b"a" * 990 + b"\xff" * 10)  # exactly 1%: repaired
    bad.write_bytes(b"a" * 989 + b"\xff" * 11)  # just over: refused
    with pytest.warns(UserWarning, match="10 bytes"):
        assert load_documents(str(ok)) == ["a" * 990 + "\ufffd" * 10]
    with pytest.raises(DataError, match=r"does not look like UTF-8 text \(11 of 1000 bytes invalid\); convert it"):
        load_documents(str(bad))


def test_binary_file_in_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_text("text", encoding="utf-8")
    (tmp_path / "f" / "logo.png").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match="logo.png does not look like UTF-8 text"):
        load_documents(str(tmp_path / "f"))


def test_fingerprint_is_stable_and_tracks_changes(tmp_path: Path) -> None:
    root = tmp_path / "fp"
    root.mkdir()
    (root / "a.txt").write_text("hello", encoding="utf-8")
    first = corpus_fingerprint(str(root))
    assert len(first) == 16 and int(first, 16) >= 0
    assert corpus_fingerprint(str(root)) == first
    (root / "a.txt").write_text("hello world", encoding="utf-8")
    second = corpus_fingerprint(str(root))
    assert second != first
    (root / "b.txt").write_text("more", encoding="utf-8")
    assert corpus_fingerprint(str(root)) not in (first, second)
    st = (root / "b.txt").stat()
    before = corpus_fingerprint(str(root))
    os.utime(root / "b.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same size
    assert corpus_fingerprint(str(root)) != before
    assert corpus_fingerprint(str(root / "a.txt")) != corpus_fingerprint(str(root / "b.txt"))


def test_stdlib_fingerprint_is_stable() -> None:
    assert corpus_fingerprint("builtin:stdlib") == corpus_fingerprint("builtin:stdlib")
    with pytest.raises(DataError, match="unknown built-in"):
        corpus_fingerprint("builtin:nope")


def test_a_json_file_is_refused_with_the_format_muomni_reads(tmp_path: Path) -> None:
    """Read as plain text, a JSON array of records trained on its brackets and quotes, as one document."""
    path = tmp_path / "records.json"
    path.write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"is a \.json file; muomni reads \.jsonl, one .* object a line: convert it"):
        load_documents(str(path))


def test_a_binary_file_in_a_folder_is_named_with_the_way_out(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("print('hi')\n", encoding="utf-8")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.pyc").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(DataError, match=r"a\.pyc does not look like UTF-8 text .* or remove it from the corpus"):
        load_documents(str(tmp_path))


def test_a_json_file_in_a_folder_is_refused_as_on_its_own(tmp_path: Path) -> None:
    """It was read as plain text, JSON's syntax and all, while the same file given alone was refused."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text", encoding="utf-8")
    (root / "sub" / "data.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    said = r"data\.json is a \.json file; muomni reads \.jsonl, .* or remove it from the corpus\)$"
    with pytest.raises(DataError, match=said):
        load_documents(str(root))
    with pytest.raises(DataError, match=said):  # the cache's key too: a corpus tokenized before is not reused
        corpus_fingerprint(str(root))
    (root / "b.JSON").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.JSON is a \.json file \(and 1 more \.json files\)"):
        load_documents(str(root))


_NOTE = "Shopping list:\n\neggs, milk, café au lait\n\nCall Ana at 5.\n"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\xff\xfe" + _NOTE.encode("utf-16-le"), r"is UTF-16 text, not UTF-8: convert it \(e\.g\. iconv -f UTF-16 "),
        (b"\xfe\xff" + _NOTE.encode("utf-16-be"), r"is UTF-16 text, not UTF-8: convert it \(e\.g\. iconv -f UTF-16 "),
        (_NOTE.encode("utf-16-le"), r"looks like UTF-16LE text without a byte-order mark .* iconv -f UTF-16LE "),
        (_NOTE.encode("utf-16-be"), r"looks like UTF-16BE text without a byte-order mark .* iconv -f UTF-16BE "),
        ("Привет, мир. Это текст.\n".encode("utf-16-le"), r"looks like UTF-16LE text without a byte-order mark"),
        (_NOTE.encode("utf-32"), r"is UTF-32 text, not UTF-8: convert it \(e\.g\. iconv -f UTF-32 "),
        (_NOTE.encode("utf-32-le"), r"is not UTF-8 text \(\d+ of its first \d+ bytes are NUL\)"),
    ],
    ids=["utf16le-bom", "utf16be-bom", "utf16le", "utf16be", "utf16le-cyrillic", "utf32-bom", "utf32le"],
)
def test_utf16_and_utf32_text_is_refused(tmp_path: Path, data: bytes, said: str) -> None:
    """Mostly ASCII, it decoded as UTF-8 with a NUL between every two characters: trained on, with only a
    warning for the byte-order mark's bytes."""
    for name in ("notes.txt", "notes.jsonl", "folder/notes.txt"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        source = tmp_path / "folder" if name.startswith("folder/") else path
        with pytest.raises(DataError, match=f"notes\\.{path.suffix[1:]} {said}") as info:
            load_documents(str(source))
        assert "\n" not in str(info.value)


def test_a_utf16_corpus_is_one_line_and_exit_2_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from muomni.cli import main

    path = tmp_path / "utf16.txt"
    path.write_bytes(b"\xff\xfe" + _NOTE.encode("utf-16-le"))
    settings = ["max_steps=1", "vocab_size=300", "ctx_len=16", "device=cpu", "val_split=0"]
    assert main(["train", "--config", "debug", *settings, f"train_text={path}", f"save_dir={tmp_path / 'run'}"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"muomni: error: {path} is UTF-16 text, not UTF-8: convert it (e.g. iconv -f UTF-16 -t UTF-8)"], (
        lines
    )


def test_stray_nul_and_bad_bytes_in_utf8_text_still_only_warn(tmp_path: Path) -> None:
    """The UTF-16 check must not catch UTF-8 text with a few stray bytes, a NUL among them."""
    path = tmp_path / "log.txt"
    text = "line of a log file\n" * 50
    path.write_bytes(b"\xe9 " + text.encode("utf-8") + b"\x00\x00 caf\xe9\n")
    with pytest.warns(UserWarning, match=r"log.txt: 2 bytes were not UTF-8 and were replaced with U\+FFFD"):
        (doc,) = load_documents(str(path))
    assert doc == "\ufffd " + text + "\x00\x00 caf\ufffd\n"


def test_a_utf8_byte_order_mark_is_kept_in_text_and_skipped_in_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello\n\nworld")
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "hello"}\n')
    assert load_documents(str(tmp_path / "a.txt")) == ["\ufeffhello", "world"]
    assert load_documents(str(tmp_path / "a.jsonl")) == ["hello"]
