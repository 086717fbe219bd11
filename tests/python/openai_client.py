"""Drives `agentos serve` with the official OpenAI Python client.

Usage: openai_client.py BASE_URL MODEL SCENARIO
Prints one JSON object with what it saw; the Rust test that started the server asserts on it.
Scenarios:
  basic       chat, streaming with usage, JSON-schema output, a tool-call round trip, an agent
  concurrent  16 streaming clients at once
  disconnect  a client that reads a few chunks of a long stream and hangs up
"""

import json
import sys
import threading

from openai import OpenAI

base_url, model, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=300)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def basic():
    out = {}
    r = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=24)
    out["chat"] = {
        "object": r.object,
        "content": r.choices[0].message.content,
        "role": r.choices[0].message.role,
        "finish_reason": r.choices[0].finish_reason,
        "usage": r.usage.model_dump(),
    }

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    out["stream"] = {
        "first_role": chunks[0].choices[0].delta.role if chunks[0].choices else None,
        "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        "finish_reasons": [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
        "usage": chunks[-1].usage.model_dump() if chunks[-1].usage else None,
        "objects": sorted({c.object for c in chunks}),
    }

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a large city and its country, as JSON."}],
        temperature=0,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    text = r.choices[0].message.content
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    out["json"] = {"content": text, "parsed": parsed}

    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
    ask = [{"role": "user", "content": "What is 17 plus 25? Use the add function."}]
    r = client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, max_tokens=64
    )
    message = r.choices[0].message
    calls = message.tool_calls or []
    call = calls[0] if calls else None
    arguments = json.loads(call.function.arguments) if call else None
    follow = None
    if call:
        result = arguments["a"] + arguments["b"]
        r2 = client.chat.completions.create(
            model=model,
            messages=ask
            + [
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": str(result)},
            ],
            tools=tools,
            temperature=0,
            max_tokens=48,
        )
        m2 = r2.choices[0].message
        follow = {
            "content": m2.content,
            "tool_calls": [c.function.name for c in (m2.tool_calls or [])],
            "finish_reason": r2.choices[0].finish_reason,
            "result": result,
        }
    out["tools"] = {
        "finish_reason": r.choices[0].finish_reason,
        "name": call.function.name if call else None,
        "arguments": arguments,
        "id": call.id if call else None,
        "follow": follow,
    }

    agent_chunks = list(
        client.chat.completions.create(
            model="agent:Helper", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    out["agent"] = {
        "text": "".join(c.choices[0].delta.content or "" for c in agent_chunks if c.choices),
        "usage": agent_chunks[-1].usage.model_dump() if agent_chunks[-1].usage else None,
    }

    try:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
        out["unknown_model"] = None
    except Exception as e:  # openai.NotFoundError
        out["unknown_model"] = {"type": type(e).__name__, "status": getattr(e, "status_code", None)}
    return out


def concurrent():
    results = [None] * 16

    def one(i):
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Say something about the number {i}."}],
                temperature=0.7,
                seed=i,
                max_tokens=24,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, finish, usage = "", None, None
            for c in stream:
                if c.choices:
                    text += c.choices[0].delta.content or ""
                    finish = c.choices[0].finish_reason or finish
                if c.usage:
                    usage = c.usage.completion_tokens
            results[i] = {"text": text, "finish_reason": finish, "completion_tokens": usage}
        except Exception as e:
            results[i] = {"error": repr(e)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results}


def disconnect():
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
        temperature=0.8,
        seed=3,
        max_tokens=2000,
        stream=True,
    )
    seen = 0
    for _ in stream:
        seen += 1
        if seen >= 4:
            break
    stream.close()
    return {"chunks_read": seen}


print(json.dumps({"basic": basic, "concurrent": concurrent, "disconnect": disconnect}[scenario]()))
