"""The browser demo: the seed's exam page, without and with sessionlock, side by side.

    python -m sessionlock demo --serve                 # open http://127.0.0.1:8000/
    python -m sessionlock demo --serve --port 0        # a free port; the URL is printed

One waitress server (threads, so requests really overlap) serves a page with two frames:
the same Flask exam app (questions, an answer form, "next", a progress bar, Flask's default
signed-cookie session) mounted twice, at ``/bare/`` as it is and at ``/locked/`` wrapped in
:class:`sessionlock.flask.SessionLock` with its defaults (cookie ``session`` tracked) and the
seed's rules. Each side's session cookie has its own ``Path``, so the two never mix.

The page's buttons send N requests at once from the browser (fetch), as N tabs or a double
click do, first to the bare side, then to the locked one, and show what each side kept:
the bare side loses answers and clicks (every request carried the same old cookie, the last
response wins), the locked side keeps all of them. Each answer and each "next" takes
``work`` seconds between reading the session and writing it ("grading the answer"), so
every request of a burst is sent before the first response comes back.
Needs Flask and waitress: ``pip install 'sessionlock[demo]'``.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .demo import EXTRA_HINT, _import_waitress

try:
    from flask import Flask, abort, jsonify, redirect, render_template_string, request, session
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
except ImportError as error:
    raise ImportError(f"the exam demo needs Flask: {EXTRA_HINT}") from error

from .flask import SessionLock
from .rules import Ruleset, index_within, one_of, required, rule, type_of

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from flask.sessions import SessionMixin
    from flask.typing import ResponseReturnValue

__all__ = ["RULES", "WORK", "demo_app", "exam_app", "serve_command"]

WORK = 0.2  # seconds between reading the session and writing it
THREADS = 16  # the locked side lets (16 - 1) // 2 = 7 requests of a session wait at once
SIDES = {"bare": "without sessionlock", "locked": "with sessionlock"}

# (question, choices, index of the right choice); ids 101, 102, ... as in the seed.
QUESTIONS = (
    ("Which status code means Too Many Requests?", ("404", "409", "503", "429"), 3),
    (
        "Where does Flask keep its default session?",
        ("In a database", "In the server's memory", "In a signed cookie", "In localStorage"),
        2,
    ),
    (
        "Which cookie attribute hides a cookie from scripts?",
        ("Secure", "SameSite", "HttpOnly", "Path"),
        2,
    ),
    (
        "What does Set-Cookie: a=1; Max-Age=0 do?",
        ("Keeps a for a year", "Deletes a", "Makes a a session cookie", "Nothing"),
        1,
    ),
    (
        "Two tabs send the same old session cookie at once. Whose change survives?",
        ("Both", "The last response's", "The first response's", "Neither"),
        1,
    ),
    (
        "What does a request waiting for its turn hold on a threaded WSGI server?",
        ("Nothing", "A thread", "A process", "A database row"),
        1,
    ),
    ("Which SameSite value does Chromium apply by default?", ("Strict", "Lax", "None", "Host"), 1),
    ("Which method should a form that changes state use?", ("GET", "HEAD", "POST", "OPTIONS"), 2),
    (
        "Which request goes first when one session's requests queue in sessionlock?",
        ("The shortest", "A random one", "The newest", "The oldest"),
        3,
    ),
    (
        "What does the __Host- cookie prefix require?",
        ("HttpOnly only", "A Domain attribute", "A Max-Age", "Secure, Path=/ and no Domain"),
        3,
    ),
)
QUESTION_IDS = tuple(range(101, 101 + len(QUESTIONS)))
BY_ID = dict(zip(QUESTION_IDS, QUESTIONS, strict=True))


def _progress_problem(exam: Mapping[str, Any]) -> str | None:
    progress = exam.get("progress_tracking")
    if isinstance(progress, dict) and progress.get("current_question") != exam.get("exam_current"):
        return "progress_tracking disagrees with exam_current"
    return None


def _progress_repair(exam: Any) -> None:
    exam["progress_tracking"] = {
        **exam["progress_tracking"],
        "current_question": exam["exam_current"],
    }


# The seed's proposals, declared once: required keys, the index clamped, progress consistent.
RULES = Ruleset(
    [
        type_of("exam_question_ids", list, default=list),
        required("exam_current", 0),
        type_of("exam_current", int, default=0),
        index_within("exam_current", "exam_question_ids"),
        required("selected_question_type", "basic"),
        one_of("selected_question_type", ("basic", "specialist"), default="basic"),
        rule(name="progress_tracking", detect=_progress_problem, repair=_progress_repair),
    ],
    header="X-Session-Repaired",
)


# -- the exam: the seed's session keys, its handlers ------------------------------------


def _start(exam: SessionMixin) -> None:
    exam.clear()
    exam.update(
        exam_question_ids=list(QUESTION_IDS),
        exam_current=0,
        selected_question_type="basic",
        exam_category="basic-subjects",
        s_type="basic",
        s_current=0,
        s_start=int(time.time()),
        exam_answers={},
    )
    _track(exam, None)


def _track(exam: SessionMixin, qid: int | None) -> None:
    exam["progress_tracking"] = {
        "current_question": exam["exam_current"],
        "total_questions": len(exam["exam_question_ids"]),
        "last_answered_qid": qid,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _first_unanswered(ids: list[int], answers: Mapping[str, int]) -> int:
    """The index the exam goes to after an answer: the first open question, else the last."""
    return next((i for i, qid in enumerate(ids) if str(qid) not in answers), len(ids) - 1)


def _state(exam: SessionMixin) -> dict[str, Any]:
    ids = list(exam.get("exam_question_ids", []))
    answers = dict(exam.get("exam_answers", {}))
    return {
        "total": len(ids),
        "current": exam.get("exam_current", 0),
        "answers": answers,
        "unanswered": [qid for qid in ids if str(qid) not in answers],
    }


_EXAM_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Exam ({{ side }})</title><style>
body { font: 15px system-ui, sans-serif; margin: 12px; }
progress { width: 100%; height: 14px; }
.past { color: #b00020; font-weight: bold; }
table { border-collapse: collapse; margin-top: 8px; }
td { padding: 1px 8px; border-bottom: 1px solid #ddd; }
tr.current { background: #fff6cc; }
.buttons { display: flex; gap: 6px; margin: 8px 0; }
</style></head><body>
<h3 id="label">Question {{ current + 1 }} of {{ total }}</h3>
<progress id="progress" value="{{ answered }}" max="{{ total }}"></progress>
<p id="answered" data-count="{{ answered }}">{{ answered }} of {{ total }} answered</p>
{% if question %}
<form method="post" action="answer">
<input type="hidden" name="qid" value="{{ qid }}">
<p><b>{{ question[0] }}</b></p>
{% for choice in question[1] %}
<label><input type="radio" name="choice" value="{{ loop.index0 }}"
{% if loop.first %}checked{% endif %}> {{ choice }}</label><br>
{% endfor %}
<div class="buttons"><button id="answer" type="submit">answer</button>
<button id="next" type="submit" formaction="next">next</button></div>
</form>
{% else %}
<p class="past">No question {{ current + 1 }}: the session's index is past the end of its
list (the seed's "question 11 of 10").</p>
<form method="post" action="next"><button id="next" type="submit">next</button></form>
{% endif %}
<table id="answers">
{% for row in rows %}
<tr{% if row.current %} class="current"{% endif %}><td>Q{{ loop.index }}</td>
<td>{{ row.answer }}</td><td>{{ row.mark }}</td></tr>
{% endfor %}
</table>
<form method="post" action="restart"><div class="buttons">
<button id="restart" type="submit">restart</button></div></form>
</body></html>
"""


def exam_app(*, mount: str, locked: bool, work: float = WORK) -> Flask:
    """The exam at ``mount`` (its cookie's Path); ``locked``: wrapped in SessionLock."""
    app = Flask(__name__)
    app.secret_key = secrets.token_hex(32)  # a fresh key per run: old cookies start over
    app.config["SESSION_COOKIE_PATH"] = mount

    def started() -> SessionMixin:
        if "exam_question_ids" not in session:
            _start(session)
        return session

    def reply() -> ResponseReturnValue:
        if request.accept_mimetypes.best == "application/json":  # the page's fetch()
            return jsonify(_state(session))
        return redirect(f"{request.script_root}/", code=303)

    @app.get("/")
    def page() -> ResponseReturnValue:
        exam = started()
        ids = list(exam["exam_question_ids"])
        current = exam.get("exam_current", 0)
        answers = exam.get("exam_answers", {})
        qid = ids[current] if 0 <= current < len(ids) else None
        rows = []
        for index, row_qid in enumerate(ids):
            answer = answers.get(str(row_qid))
            _, choices, right = BY_ID[row_qid]
            rows.append(
                {
                    "current": index == current,
                    "answer": "-" if answer is None else choices[answer],
                    "mark": "" if answer is None else ("right" if answer == right else "wrong"),
                }
            )
        return render_template_string(
            _EXAM_PAGE,
            side=SIDES["locked" if locked else "bare"],
            current=current,
            total=len(ids),
            answered=len(answers),
            qid=qid,
            question=BY_ID.get(qid) if qid is not None else None,
            rows=rows,
        )

    @app.get("/state")
    def state() -> ResponseReturnValue:
        return jsonify(_state(started()))

    @app.post("/answer")
    def answer() -> ResponseReturnValue:
        """The seed's answer handler: read the answers, grade, write them back."""
        qid = request.form.get("qid", type=int)
        choice = request.form.get("choice", type=int)
        if qid is None or qid not in BY_ID or choice not in range(len(BY_ID[qid][1])):
            abort(400)
        exam = started()
        answers = dict(exam.get("exam_answers", {}))  # the session as this request loaded it
        time.sleep(work)  # grading the answer, loading the next question
        answers[str(qid)] = choice
        exam["exam_answers"] = answers
        exam["exam_current"] = _first_unanswered(exam["exam_question_ids"], answers)
        _track(exam, qid)
        return reply()

    @app.post("/next")
    def next_() -> ResponseReturnValue:
        """The seed's "next": no bound check, which is how "question 11 of 10" happened."""
        exam = started()
        current = exam.get("exam_current", 0)
        time.sleep(work)
        exam["exam_current"] = current + 1
        _track(exam, None)
        return reply()

    @app.post("/restart")
    def restart() -> ResponseReturnValue:
        _start(session)
        return reply()

    if locked:
        SessionLock(app, rules=RULES)  # the defaults: file:// backend, cookie "session" tracked
    return app


_INDEX_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sessionlock demo: the exam page</title><style>
body { font: 15px system-ui, sans-serif; margin: 16px; max-width: 1200px; }
.sides { display: flex; gap: 16px; }
.sides section { flex: 1; }
iframe { width: 100%; height: 640px; border: 1px solid #aaa; }
.result { min-height: 2.6em; margin: 4px 0; }
.lost { color: #b00020; font-weight: bold; }
.kept { color: #006400; font-weight: bold; }
.controls { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin: 12px 0; }
</style></head><body data-state="idle">
<h1>The exam page, without and with sessionlock</h1>
<p>Both frames run the same Flask exam app on Flask's default session, a signed cookie.
The left one is bare; the right one is wrapped in <code>SessionLock(app, rules=RULES)</code>
with its defaults. Each answer and each "next" takes {{ work_ms }} ms between reading the
session and writing it. Answer and click in the frames as a student would, or send a burst:
the buttons below send N requests at once, as N tabs or a double click do, first to the
left side, then to the right one.</p>
<div class="controls">
<label>requests at once <select id="n">
{% for n in range(2, 7) %}<option{% if n == 5 %} selected{% endif %}>{{ n }}</option>{% endfor %}
</select></label>
<button id="race-answers">answer the next N questions at once (N tabs)</button>
<button id="race-next">click "next" N times at once (a double click)</button>
<button id="restart-both">restart both</button>
</div>
<div class="sides">
{% for side, title in sides.items() %}
<section><h2>{{ title }}</h2>
<p class="result" id="{{ side }}-result"></p>
<iframe id="{{ side }}-frame" src="{{ side }}/" title="{{ title }}"></iframe></section>
{% endfor %}
</div>
<p>Also try "next" on the last question: the bare side shows "Question 11 of 10" (the
seed's bug); on the right the rules clamp the index and the terminal logs the repair.</p>
<script>
const SIDES = {{ sides|list|tojson }};
const JSON_ONLY = { headers: { Accept: "application/json" } };

async function state(side) {
  return (await fetch(`${side}/state`, JSON_ONLY)).json();
}

function post(side, path, fields) {
  const body = new URLSearchParams(fields);
  return fetch(`${side}/${path}`, { method: "POST", body, ...JSON_ONLY });
}

async function burst(requests) {  // all sent at once; how many the server refused
  const responses = await Promise.all(requests);
  return responses.filter((response) => !response.ok).length;
}

function reload(side) {
  const frame = document.getElementById(`${side}-frame`);
  return new Promise((resolve) => {
    frame.addEventListener("load", resolve, { once: true });
    frame.contentWindow.location.reload();
  });
}

async function answers(side, n) {
  const before = await state(side);
  const qids = before.unanswered.slice(0, n);
  const refused = await burst(qids.map((qid, i) => post(side, "answer", { qid, choice: i % 4 })));
  const after = await state(side);
  const kept = qids.filter((qid) => String(qid) in after.answers).length;
  const text = qids.length === 0 ? "every question is answered: restart"
    : `${qids.length} answers sent at once: ${kept} kept, ${qids.length - kept} lost`;
  return { sent: qids.length, kept, refused, text };
}

async function clicks(side, n) {
  const before = await state(side);
  const refused = await burst(Array.from({ length: n }, () => post(side, "next", {})));
  const after = await state(side);
  const moved = after.current - before.current;
  const room = before.total - 1 - before.current;  // a sound exam stops at its last question
  const expected = Math.min(n, room);
  const limit = room < n ? ` (${room} left before the last question)` : "";
  return { sent: expected, kept: moved, refused,
           text: `"next" clicked ${n} times at once: moved ${moved} of ${expected}${limit}` };
}

async function run(action) {
  const n = Number(document.getElementById("n").value);
  document.body.dataset.state = "running";
  document.querySelectorAll("button").forEach((button) => { button.disabled = true; });
  try {
    for (const side of SIDES) {
      const result = document.getElementById(`${side}-result`);
      result.textContent = "sending...";
      result.className = "result";
      delete result.dataset.sent;
      delete result.dataset.kept;
      const outcome = await action(side, n);
      await reload(side);
      result.textContent = outcome.text + (outcome.refused ? `, ${outcome.refused} refused` : "");
      result.className = "result " + (outcome.kept === outcome.sent ? "kept" : "lost");
      result.dataset.sent = outcome.sent;
      result.dataset.kept = outcome.kept;
    }
  } finally {
    document.querySelectorAll("button").forEach((button) => { button.disabled = false; });
    document.body.dataset.state = "done";
  }
}

async function restart(side) {
  await post(side, "restart", {});
  return { sent: 0, kept: 0, refused: 0, text: "" };
}

document.getElementById("race-answers").onclick = () => run(answers);
document.getElementById("race-next").onclick = () => run(clicks);
document.getElementById("restart-both").onclick = () => run(restart);
</script>
</body></html>
"""


def demo_app(*, work: float = WORK) -> tuple[WSGIApplication, list[Callable[[], None]]]:
    """The page at ``/``, the bare exam at ``/bare/``, the locked one at ``/locked/``; and
    what to close when the server stops (the locked side's backend)."""
    index = Flask(__name__)

    @index.get("/")
    def page() -> ResponseReturnValue:
        return render_template_string(_INDEX_PAGE, sides=SIDES, work_ms=round(work * 1000))

    bare = exam_app(mount="/bare", locked=False, work=work)
    locked = exam_app(mount="/locked", locked=True, work=work)
    backend = locked.extensions["sessionlock"].core.backend
    app = DispatcherMiddleware(index, {"/bare": bare, "/locked": locked})
    return app, [backend.close]


def serve_command(host: str, port: int, *, work: float = WORK) -> int:
    """``python -m sessionlock demo --serve``: serve until Ctrl-C; the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    create_server = _import_waitress()
    app, closers = demo_app(work=work)
    try:
        try:
            server = create_server(app, host=host, port=port, threads=THREADS)
        except OSError as error:
            print(f"error: cannot listen on {host}:{port}: {error}", file=sys.stderr)
            return 1
        shown = (
            f"[{server.effective_host}]"
            if ":" in str(server.effective_host)
            else server.effective_host
        )
        url = f"http://{shown}:{server.effective_port}/"
        print("sessionlock demo: the seed's exam page, without and with sessionlock", flush=True)
        print(f"  open {url}", flush=True)
        print(f"  (without: {url}bare/  with: {url}locked/)  Ctrl-C stops", flush=True)
        try:
            server.run()  # returns on Ctrl-C, its workers stopped
        except KeyboardInterrupt:  # before the loop started
            server.close()
        print("stopped", flush=True)
        return 0
    finally:
        for close in closers:
            close()
