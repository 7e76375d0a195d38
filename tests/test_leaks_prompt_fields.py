"""requests: chat_messages must keep PII in the prompt from reaching the LLM
(masked, or the request refused). Each body below is a request shape the
named backend accepts in which the text is prompt context for the model;
the filter used to forward it untouched."""
import json

import pytest

from prompt_gateway import EMAIL, SSN, leaked, post, start

E = EMAIL

CASES = {
    # vLLM (chat_utils._parse_chat_message_content_part: `if isinstance(part, str): return part`)
    "vllm_bare_string_content_parts": ("/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": [f"Customer record: {E}, SSN {SSN}"]}]}),
    # Anthropic Messages: plain-text document (the RAG / citations shape)
    "anthropic_document_text_source": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": f"HR file: {E}, SSN {SSN}"},
             "title": "hr.txt", "citations": {"enabled": True}},
            {"type": "text", "text": "Summarize the file."}]}]}),
    "anthropic_document_content_source": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": f"HR file: {E}"}]}}]}]}),
    # Anthropic search_result blocks (RAG results), top level and inside a tool_result
    "anthropic_search_result": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "search_result", "source": "kb://hr/1", "title": "HR", "content": [{"type": "text", "text": f"Contact {E}"}]}]}]}),
    "anthropic_tool_result_with_search_result": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "search_result", "source": "kb://hr/1", "title": "HR", "content": [{"type": "text", "text": f"Contact {E}"}]}]}]}]}),
    # an earlier assistant turn replayed with its citations (cited_text repeats the document)
    "anthropic_citation_cited_text": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [
            {"role": "user", "content": "who?"},
            {"role": "assistant", "content": [{"type": "text", "text": "See the file.", "citations": [
                {"type": "char_location", "cited_text": f"Contact {E}", "document_index": 0, "start_char_index": 0, "end_char_index": 28}]}]},
            {"role": "user", "content": "ok"}]}),
    # Responses API: earlier output items replayed as input (store=false conversations)
    "responses_file_search_call_results": ("/v1/responses",
        {"model": "m", "input": [
            {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["contact"],
             "results": [{"file_id": "f", "filename": "hr.txt", "score": 0.9, "text": f"Contact {E}"}]},
            {"role": "user", "content": "who?"}]}),
    "responses_code_interpreter_call": ("/v1/responses",
        {"model": "m", "input": [
            {"type": "code_interpreter_call", "id": "ci_1", "status": "completed", "container_id": "c",
             "code": f"lookup('{E}')", "outputs": [{"type": "logs", "logs": f"ssn={SSN}"}]},
            {"role": "user", "content": "go on"}]}),
    "responses_web_search_call_query": ("/v1/responses",
        {"model": "m", "input": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": f"who is {E}"}},
            {"role": "user", "content": "go on"}]}),
    # OpenAI Chat Completions: an earlier custom-tool call (GPT-5 custom tools); the
    # Responses API equivalent (custom_tool_call.input) IS masked
    "chat_custom_tool_call_input": ("/v1/chat/completions",
        {"model": "m", "messages": [
            {"role": "user", "content": "find the customer"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "custom", "custom": {"name": "sql", "input": f"select * from t where mail='{E}'"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "1 row"}]}),
    # Anthropic: server tool and MCP tool calls replayed (tool_use input IS masked)
    "anthropic_server_tool_use_input": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [
            {"role": "user", "content": "look them up"},
            {"role": "assistant", "content": [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": f"who is {E}"}},
                                              {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}]}]}),
    "anthropic_mcp_tool_use_input": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [
            {"role": "user", "content": "look them up"},
            {"role": "assistant", "content": [{"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "lookup", "server_name": "crm", "input": {"email": E}}]}]}),
    "anthropic_mcp_tool_result": ("/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "is_error": False, "content": [{"type": "text", "text": f"Contact {E}"}]}]}]}),
    # `input` as a string is masked on every endpoint, and `prompt` as an array of
    # strings too; `input` as an array of strings (embeddings, moderations) is not
    "embeddings_input_string_array": ("/v1/embeddings",
        {"model": "text-embedding-3-small", "input": [f"Customer {E}", f"SSN {SSN}"]}),
}


@pytest.fixture(scope="module")
def g(envoy_bin):
    g = start(envoy_bin)
    yield g
    g["env"].stop()
    g["up"].close()


@pytest.mark.parametrize("name", list(CASES))
def test_prompt_pii_never_reaches_the_llm(g, name):
    path, body = CASES[name]
    code, out, sent = post(g, path, body)
    assert not leaked(sent), f"{name}: HTTP {code}, upstream received {leaked(sent)} unmasked: {sent[:300]!r}"
