#!/usr/bin/env python3
"""Writes tests/data/chat-golden-dsv4.jsonl: OpenAI-style chat request bodies and the
prompt DeepSeek's official encoder (encoding/encoding_dsv4.py of the DeepSeek-V4-Flash
repository, not part of this project) renders for each. Run it with the directory that
holds encoding_dsv4.py:  python3 tests/data/gen-chat-golden-dsv4.py /path/to/encoding

The daemon attaches request-level tools to the first message when it is a system message,
else to an empty system message in front; the encoder is given the same. One JSON object
per line: name, body (the request), want (the rendered prompt)."""
import copy, json, os, sys

sys.path.insert(0, sys.argv[1])
from encoding_dsv4 import encode_messages  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a specific location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}},
        "required": ["location"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web for information",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "Search query"},
        "num_results": {"type": "integer", "description": "Number of results to return"}},
        "required": ["query"]}}}
ONE_TOOL_TURN = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Beijing?"},
    {"role": "assistant", "content": None,
     "reasoning_content": "The user wants to know the weather in Beijing. I should use the get_weather tool.",
     "tool_calls": [{"id": "call_001", "type": "function", "function": {
         "name": "get_weather", "arguments": "{\"location\": \"Beijing\", \"unit\": \"celsius\"}"}}]},
    {"role": "tool", "tool_call_id": "call_001",
     "content": "{\"temperature\": 22, \"condition\": \"sunny\", \"humidity\": 45}"},
    {"role": "assistant", "reasoning_content": "Got the weather data. Let me format a nice response.",
     "content": "The weather in Beijing is currently sunny with a temperature of 22°C and 45% humidity."},
]
NO_TOOLS = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "reasoning_content": "The user said hello, I should greet back.",
     "content": "Hi there! How can I help you?"},
    {"role": "user", "content": "What is the capital of France?"},
]
TWO_CALLS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and news about ÆØÅ?"},
    {"role": "assistant", "content": "Checking both.", "reasoning_content": "two tools",
     "tool_calls": [
         {"id": "a1", "type": "function", "function": {"name": "get_weather",
                                                        "arguments": "{\"location\": \"Oslo\", \"days\": 3, \"exact\": true, \"temp\": 22.5, \"tiny\": 1e-07}"}},
         {"id": "b2", "type": "function", "function": {"name": "search",
                                                        "arguments": "{\"query\": \"ÆØÅ \\\"quoted\\\"\\nline\", \"filters\": {\"lang\": [\"no\", \"en\"], \"max\": null}}"}}]},
    {"role": "tool", "tool_call_id": "b2", "content": "no news"},
    {"role": "tool", "tool_call_id": "a1", "content": "cold"},
    {"role": "user", "content": "Thanks, and tomorrow?"},
]
BAD_ARGS = [
    {"role": "user", "content": "go"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "search", "arguments": "not json"}}]},
    {"role": "tool", "tool_call_id": "x", "content": "ok"},
]

CASES = [
    ("official_case_1_thinking_with_tools", ONE_TOOL_TURN, [WEATHER, SEARCH], "thinking", None),
    ("official_case_1_in_chat_mode", ONE_TOOL_TURN, [WEATHER, SEARCH], "chat", None),
    ("thinking_drops_earlier_reasoning", NO_TOOLS, None, "thinking", None),
    ("chat_mode_plain", NO_TOOLS, None, "chat", None),
    ("two_calls_results_sorted_and_merged_with_user", TWO_CALLS, [WEATHER, SEARCH], "thinking", None),
    ("two_calls_chat_mode", TWO_CALLS, [WEATHER, SEARCH], "chat", None),
    ("tools_without_system_message", BAD_ARGS, [SEARCH], "chat", None),
    ("tool_history_without_tools_drops_reasoning", TWO_CALLS, None, "thinking", None),
    ("reasoning_effort_max", NO_TOOLS, None, "thinking", "max"),
]


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat-golden-dsv4.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for name, msgs, tools, mode, effort in CASES:
            enc = copy.deepcopy(msgs)
            if tools:
                if enc[0]["role"] != "system":
                    enc.insert(0, {"role": "system", "content": ""})
                enc[0]["tools"] = copy.deepcopy(tools)
            want = encode_messages(enc, thinking_mode=mode, reasoning_effort=effort)
            body = {"messages": msgs, "thinking": mode == "thinking"}
            if tools:
                body["tools"] = tools
            if effort:
                body["reasoning_effort"] = effort
            f.write(json.dumps({"name": name, "body": body, "want": want}, ensure_ascii=False) + "\n")


main()
