"""The judge's parts without a model server: trace building, arrival times, stream parsing, summary
math, its HTTP client against canned answers, failure recording and the CLI's outputs (against a
port nobody listens on)."""
from __future__ import annotations

import io
import json
import random
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

PERF_DIR = Path(__file__).resolve().parents[2] / "performance_serving"
sys.path.insert(0, str(PERF_DIR))

import test_serving_performance as cli  # noqa: E402
from judge.client import RequestRecord, legacy_backend, run_trace  # noqa: E402
from judge.metrics import summarize  # noqa: E402
from judge.streams import LegacyStreamParser, OpenAIStreamParser  # noqa: E402
from judge.trace import arrival_offsets, build_trace, find_data_file, load_records, make_prompt  # noqa: E402

CONTEST = Path("/work/shared/contest")
WORDS = "the a model token serve batch cache prompt answer write list three words about rain sun".split()


@pytest.fixture(scope="module")
def tiny_tokenizer_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=60,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_tokenizer_file) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_file))


RECORDS = [
    {"instruction": "write three words", "input": "", "output": "rain sun cache"},
    {"instruction": "list", "input": "the model", "output": "a token a batch"},
    {"instruction": "answer", "input": "prompt", "output": "the answer about the rain and the sun"},
]


def _record(ttft, e2e, tokens, itl=(), ok=True, error=None, input_tokens=10) -> RequestRecord:
    return RequestRecord("p", "t", e2e, ttft, tokens, list(itl), error, ok, 0.0, input_tokens, tokens, 0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prompt_joins_instruction_and_input_with_a_bare_colon():
    assert make_prompt(RECORDS[0]) == "write three words"
    assert make_prompt(RECORDS[1]) == "list:the model"


def test_trace_cycles_records_and_counts_output_pieces_without_bos(tiny_tokenizer):
    trace = build_trace(RECORDS, tiny_tokenizer, 7, qps=2.0, seed=1)
    assert [t.record for t in trace] == [0, 1, 2, 0, 1, 2, 0]
    assert [t.index for t in trace] == list(range(7))
    for t in trace:
        record = RECORDS[t.record]
        assert t.prompt == make_prompt(record)
        pieces = tiny_tokenizer.encode(record["output"], out_type=str)
        assert tiny_tokenizer.decode_pieces(pieces) == record["output"]
        assert t.max_new_tokens == len(pieces) > 0
        assert t.input_tokens == len(tiny_tokenizer.encode(t.prompt)) + 1  # + BOS
    assert trace[0].send_at == 0.0
    assert all(b.send_at >= a.send_at for a, b in zip(trace, trace[1:]))


@pytest.mark.skipif(not (CONTEST / "tokenizer.model").is_file(), reason="contest files absent")
def test_contest_trace_matches_the_documented_lengths():
    sp = spm.SentencePieceProcessor(model_file=str(CONTEST / "tokenizer.model"))
    hello = build_trace([{"instruction": "Hello world", "input": "", "output": "Hello world"}], sp, 1, 1.0, 0)
    assert (hello[0].max_new_tokens, hello[0].input_tokens) == (2, 3)  # ▁Hello ▁world, + BOS
    trace = build_trace(load_records(CONTEST / "alpaca_5010.json"), sp, 1500, 10.0, 0)
    lengths = [t.max_new_tokens for t in trace]
    assert round(float(np.mean(lengths))) == 65 and max(lengths) == 504  # PROTOCOL.md §2


def test_arrival_gaps_are_seeded_millisecond_poisson_around_rounded_interval():
    a, b = arrival_offsets(20000, 3.0, seed=7), arrival_offsets(20000, 3.0, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, arrival_offsets(20000, 3.0, seed=8))
    gaps = np.diff(a)
    assert a[0] == 0.0 and len(gaps) == 19999
    assert np.allclose(gaps * 1000, np.round(gaps * 1000))
    # round(1/3, 2) = 0.33 s, not 0.333: the mean is within a few standard errors of 0.33.
    assert abs(gaps.mean() - 0.33) < 5 * np.sqrt(0.33e-3) / np.sqrt(len(gaps))
    with pytest.raises(ValueError, match="qps"):
        arrival_offsets(3, 0.0, seed=0)


def test_load_records_names_the_bad_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([RECORDS[0], {"instruction": "x", "input": ""}]))
    with pytest.raises(ValueError, match=r"record 1: key 'output'"):
        load_records(path)


def test_find_data_file_prefers_the_first_folder_and_lists_the_places(tmp_path):
    first, second = tmp_path / "cwd", tmp_path / "debug"
    for folder in (first, second):
        folder.mkdir()
        (folder / "d.json").write_text("[]")
    assert find_data_file("d.json", [first, second]) == first / "d.json"
    (first / "d.json").unlink()
    assert find_data_file("d.json", [first, second]) == second / "d.json"
    with pytest.raises(FileNotFoundError, match="missing.json.*cwd.*debug"):
        find_data_file("missing.json", [first, second])


def _legacy_line(text: str) -> str:
    tok = {"id": 5, "logprob": 1.5, "special": False, "text": text}
    return json.dumps({"event": "message", "retry": 30000,
                       "data": [{"details": None, "generated_text": text, "tokens": tok, "top_tokens": [tok]}]})


def test_legacy_stream_counts_token_lines_and_takes_the_full_text_line():
    parser = LegacyStreamParser()
    for t, text in ((0.5, "Hel"), (0.7, ""), (1.0, "lo")):
        parser.feed(_legacy_line(text) + "\n", t)
    parser.feed("", 1.05)
    full = {"generated_text": "Hello", "finish_reason": "length", "generated_tokens": 3, "prefill": [],
            "seed": 0, "tokens": [], "top_tokens": [], "details": None}
    parser.feed(json.dumps({"event": "message", "retry": 30000, "data": [full]}), 1.1)
    res = parser.finish()
    assert (res.text, res.output_tokens, res.first_time, res.token_times, res.error) == \
        ("Hello", 3, 0.5, [0.5, 0.7, 1.0], None)


def test_legacy_stream_records_a_non_json_line_and_keeps_reading():
    parser = LegacyStreamParser()
    parser.feed(_legacy_line("a"), 0.1)
    parser.feed("data: not json", 0.2)
    parser.feed(_legacy_line("b"), 0.3)
    res = parser.finish()
    assert res.output_tokens == 2 and res.text == "ab"
    assert res.error.startswith("protocol: line 2") and "not json" in res.error
    assert LegacyStreamParser().finish().error == "protocol: empty stream (no line)"


def test_openai_stream_uses_usage_tokens_and_needs_done():
    parser = OpenAIStreamParser()
    chunk = lambda text: "data: " + json.dumps({"choices": [{"index": 0, "text": text}], "usage": None})  # noqa: E731
    for line, t in ((": keep-alive", 0.05), (chunk("Hi"), 0.2), ("", 0.2), (chunk(" there"), 0.5),
                    (chunk(""), 0.6), ("data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 3}}), 0.6),
                    ("data: [DONE]", 0.61)):
        parser.feed(line, t)
    res = parser.finish()
    assert (res.text, res.output_tokens, res.first_time, res.token_times, res.error) == \
        ("Hi there", 3, 0.2, [0.2, 0.5], None)
    unfinished = OpenAIStreamParser()
    unfinished.feed(chunk("x"), 0.1)
    res = unfinished.finish()
    assert res.output_tokens == 1 and "[DONE]" in res.error


def test_summary_matches_hand_computed_vllm_metrics():
    records = [
        _record(0.1, 1.1, 11, itl=[0.1] * 10, input_tokens=20),   # TPOT (1.1-0.1)/10 = 0.1 s
        _record(0.2, 1.2, 3, itl=[0.3, 0.7], input_tokens=30),    # TPOT (1.2-0.2)/2 = 0.5 s
        _record(0.5, 0.5, 1, input_tokens=40),                    # one token: no TPOT
        _record(None, 2.0, 0, ok=False, error="HTTP 503: busy"),
        _record(None, 3.0, 0, ok=False, error="HTTP 503: busy"),
    ]
    s = summarize(records, duration=5.0)
    assert (s.completed, s.failed, s.failure_reasons) == (3, 2, {"HTTP 503: busy": 2})
    assert (s.total_input_tokens, s.total_output_tokens) == (90, 15)
    assert s.request_throughput == pytest.approx(0.6) and s.output_throughput == pytest.approx(3.0)
    assert s.total_token_throughput == pytest.approx(21.0)
    assert s.ttft_ms.mean == pytest.approx(800 / 3) and s.ttft_ms.median == pytest.approx(200)
    assert s.ttft_ms.p90 == pytest.approx(440)       # 200 + 0.8 * (500 - 200)
    assert s.tpot_ms.mean == pytest.approx(300) and s.tpot_ms.p90 == pytest.approx(460)
    assert s.tpot_ms.p99 == pytest.approx(496)       # 100 + 0.99 * 400
    assert s.itl_ms.mean == pytest.approx(2000 / 12) and s.itl_ms.median == pytest.approx(100)
    assert s.e2e_ms.mean == pytest.approx(2800 / 3) and s.e2e_ms.median == pytest.approx(1100)
    empty = summarize([], duration=0.0)
    assert empty.completed == 0 and empty.ttft_ms.mean is None and empty.request_throughput is None


def test_refused_connection_is_retried_then_recorded_with_its_reason(tiny_tokenizer):
    trace = build_trace(RECORDS, tiny_tokenizer, 3, qps=100.0, seed=0)
    done = []
    run = run_trace(trace, legacy_backend(f"http://127.0.0.1:{_closed_port()}"), on_record=done.append,
                    max_retries=2, retry_backoff=0.01)
    assert len(done) == 3 and [r.input for r in run.records] == [t.prompt for t in trace]
    for r in run.records:
        assert not r.ok and r.retries == 2
        assert r.error.startswith("connection failed after 3 attempts: ConnectError")
        assert r.res_time >= 0.03  # 0.01 + 0.02 s of backoff
    assert run.duration >= max(r.res_time for r in run.records)
    assert summarize(run.records, run.duration).retries == 6


class _Canned(socketserver.ThreadingTCPServer):
    """127.0.0.1 server that reads one request and writes fixed bytes (pieces sent apart), then closes."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, pieces):
        self.pieces, self.requests = pieces, []
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CannedHandler(socketserver.StreamRequestHandler):
    def handle(self):
        head = b"".join(iter(self.rfile.readline, b"\r\n"))
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        self.server.requests.append((head, self.rfile.read(length)))
        for piece in self.server.pieces:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.02)  # separate TCP reads, so lines and chunks arrive split


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _run_canned(tiny_tokenizer, pieces, **kwargs):
    trace = build_trace(RECORDS, tiny_tokenizer, 1, qps=100.0, seed=0)
    with _Canned(pieces) as server:
        run = run_trace(trace, legacy_backend(server.url), **kwargs)
        server.shutdown()
    return run.records[0], server.requests


def test_client_reads_chunked_lines_split_anywhere_and_posts_the_contest_body(tiny_tokenizer):
    lines = [_legacy_line(t) for t in ("He", "llo", " you")]
    body = "\n".join(lines).encode() + b"\n"
    cut1, cut2 = len(lines[0]) // 2, len(lines[0]) + 1 + len(lines[1])  # mid-line, right after a newline
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
              _chunk(body[:cut1]), _chunk(body[cut1:cut2]), _chunk(body[cut2:]), b"0\r\n\r\n"]
    record, requests = _run_canned(tiny_tokenizer, pieces)
    assert (record.ok, record.error, record.resp_text, record.output_tokens) == (True, None, "Hello you", 3)
    assert len(record.itl) == 2 and record.first_token_time <= record.res_time
    (head, sent), = requests
    assert head.startswith(b"POST /models/llama2/generate_stream HTTP/1.1\r\n") and b"Connection: close" in head
    params = json.loads(sent)["parameters"]
    assert params == {"max_new_tokens": record.max_new_tokens, "do_sample": "False", "return_full_text": "True"}


def test_client_records_an_error_status_with_its_body_and_does_not_retry(tiny_tokenizer):
    detail = b'{"error": "inputs: must not be empty"}'
    pieces = [b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: %d\r\n\r\n" % len(detail), detail]
    record, requests = _run_canned(tiny_tokenizer, pieces)
    assert not record.ok and record.retries == 0 and len(requests) == 1
    assert record.error == 'HTTP 422: {"error": "inputs: must not be empty"}'


def test_client_records_a_stream_cut_mid_chunk_with_the_tokens_so_far(tiny_tokenizer):
    line = _legacy_line("a").encode() + b"\n"
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", _chunk(line), b"40\r\n" + line[:10]]
    record, _ = _run_canned(tiny_tokenizer, pieces)
    assert not record.ok and record.output_tokens == 1 and record.resp_text == "a"
    assert record.error.startswith("stream broken: IncompleteReadError")


def test_client_retries_a_connection_closed_before_any_answer(tiny_tokenizer):
    record, requests = _run_canned(tiny_tokenizer, [], max_retries=2, retry_backoff=0.01)
    assert len(requests) == 3 and record.retries == 2 and not record.ok
    assert record.error == ("connection failed after 3 attempts: ConnectError: "
                            "the server closed the connection before answering")


def test_output_names_print_qps_as_python_floats():
    assert cli.output_path("out", "result", 10, "json") == Path("out/result_10.0_x.json")
    assert cli.output_path("out", "plot", 0.1, "png") == Path("out/plot_0.1_x.png")


def test_cli_rejects_bad_flags_and_names_missing_files(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["-X", "0"])
    assert exc.value.code == 2 and "-X/--qps must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["-X", "0.1", "-T", "5"])  # int(0.5) = 0 requests
    assert "at least one request" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-X", "1", "--dataset", str(tmp_path / "none.json")]) == 2
    assert "--dataset: file not found" in capsys.readouterr().err


def test_cli_writes_results_summary_plot_and_log_when_every_request_fails(tmp_path, monkeypatch,
                                                                          tiny_tokenizer_file):
    dataset = tmp_path / "alpaca.json"
    dataset.write_text(json.dumps(RECORDS))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["-X", "5", "-T", "1", "-P", str(_closed_port()), "-O", "out", "--dataset", str(dataset),
                     "--tokenizer", str(tiny_tokenizer_file), "--max-records", "2"])
    assert code == 1
    results = json.loads((tmp_path / "out" / "result_5.0_x.json").read_text())
    assert len(results) == 5 and [r["input"] for r in results][:3] == ["write three words", "list:the model",
                                                                     "write three words"]
    assert {"input", "resp_text", "res_time", "first_token_time"} <= set(results[0])
    assert all(not r["ok"] and "ConnectError" in r["error"] for r in results)
    summary = json.loads((tmp_path / "out" / "summary_5.0_x.json").read_text())
    assert (summary["completed"], summary["failed"], summary["run"]["num_requests"]) == (0, 5, 5)
    assert (tmp_path / "out" / "plot_5.0_x.png").read_bytes()[:4] == b"\x89PNG"
    logs = list((tmp_path / "testLog").glob("test_performance_*.log"))
    assert len(logs) == 1 and "All Tasks Done; Exec Time is " in logs[0].read_text()
