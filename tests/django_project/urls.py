"""The exam app's views on Django's database session (see tests/e2e/exam_app.py)."""

from __future__ import annotations

import time

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from tests.e2e import exam_app


@csrf_exempt
def start(request: HttpRequest, count: int) -> HttpResponse:
    exam_app.start_exam(request.session, count)
    return HttpResponse(exam_app.show(request.session))


@csrf_exempt
def next_(request: HttpRequest) -> HttpResponse:
    if "hold" in request.GET:  # widen the read-modify-write window for the control
        request.session.get("exam_current")
        time.sleep(float(request.GET["hold"]))
    exam_app.next_question(request.session)
    return HttpResponse(exam_app.show(request.session))


@csrf_exempt
def corrupt(request: HttpRequest) -> HttpResponse:
    exam_app.corrupt(request.session)
    return HttpResponse(exam_app.show(request.session))


def question(request: HttpRequest) -> HttpResponse:
    return HttpResponse(exam_app.show(request.session))


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("no session here")


urlpatterns = [
    path("start/<int:count>", start),
    path("next", next_),
    path("corrupt", corrupt),
    path("question", question),
    path("plain", plain),
]
