"""Drives `agentos chat` in a pseudo-terminal, as a person would.

Usage: repl_driver.py AGENTOS_BINARY [ARG...]   (arguments after `chat`)
Prints one JSON object: each step's name, whether its expected text appeared, and the
terminal output it saw; the process's exit status at the end. Standard library only.
"""

import json
import os
import pty
import re
import select
import sys
import time

binary = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "chat"] + sys.argv[2:])

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
output = ""


def read_until(patterns, timeout):
    """Reads until every pattern has appeared after the current position; returns the text."""
    global output
    start = len(output)
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = ANSI.sub("", output[start:])
        if all(p in seen for p in patterns):
            return True, seen
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            output += data.decode("utf-8", "replace")
    return False, ANSI.sub("", output[start:])


def send(text):
    os.write(fd, text.encode())


steps = []


def step(name, text, patterns, timeout=60):
    if text is not None:
        send(text)
    ok, seen = read_until(patterns, timeout)
    steps.append({"name": name, "ok": ok, "seen": seen[-2000:]})
    return ok


step("banner", None, ["/help lists the commands", "you> "], timeout=600)
step("help", "/help\r", ["/quit", "/spawn ROLE", "you> "])
step("agents", "/agents\r", ["Researcher", "Critic", "Writer", "you> "])
step("unknown", "/frobnicate\r", ["unknown command /frobnicate", "you> "])
step("bad_argument", "/spawn\r", ["usage: /spawn ROLE", "you> "])
step("no_such_role", "/spawn astronaut\r", ["no role `astronaut`", "you> "])
step("spawn", "/spawn critic\r", ["spawned Critic-2", "you> "])
step("kill", "/kill Critic-2\r", ["stopped Critic-2", "you> "])
step("model", "/model\r", ["layers", "you> "])
step("question", "What is the capital of France?\r", ["── Researcher ──", "── Critic ──", "── Writer ──", "you> "], timeout=300)
# After the answer a sync pulse merged the workers' answers: /sync lists it, and the
# blackboard holds its digest.
step("sync", "/sync\r", ["PULSE", "Manual", "you> "])
step("blackboard", "/blackboard pulse/1/\r", ["pulse/1/digest", "you> "])
# Ctrl-C as soon as the first agent starts to speak: the answer is cancelled.
step("long_question", "Write a long essay on the history of lighthouses.\r", ["── "], timeout=120)
step("cancel", "\x03", ["[cancelled]", "you> "], timeout=60)
step("stats", "/stats\r", ["kernel:", "kv cache:", "you> "])
send("/quit\r")
status = None
deadline = time.time() + 60
while time.time() < deadline:
    done, code = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(code)
        break
    read_until(["\x00never"], 0.2)
print(json.dumps({"steps": steps, "exit": status}))
