"""Chat templates: the model folder's template (tokenizer_config.json, named list, or
chat_template.jinja) rendered in a sandbox, the documented default otherwise, and template
errors as 400s over HTTP."""

from __future__ import annotations

import json
import shutil

import aiohttp
import pytest

from aisp.model.tokenizer import byte_tokenizer
from aisp.serve.chat import ChatTemplate, ChatTemplateError
from aisp.serve.server import start_server
from tests.serve.client import TIMEOUT, post, run
from tests.serve.conftest import engine_config

# Llama-3's shape: header tokens, tojson of non-ASCII, and a rule enforced with raise_exception.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.first %}"
    "{{ raise_exception('the first message cannot be the assistant') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] | tojson }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [{"role": "system", "content": "sé brief"}, {"role": "user", "content": "hi"}]
RENDERED = '<|bos|><|system|>"sé brief"<|eos|>\n<|user|>"hi"<|eos|>\n<|assistant|>'


def _folder_with(byte_model, tmp_path, template_config=None, jinja_file=None):
    folder = tmp_path / "model"
    shutil.copytree(byte_model, folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if template_config is not None:
        cfg["chat_template"] = template_config
    cfg_path.write_text(json.dumps(cfg))
    if jinja_file is not None:
        (folder / "chat_template.jinja").write_text(jinja_file)
    return folder


def test_default_template_for_a_preset():
    template = ChatTemplate.for_model("tiny", byte_tokenizer())
    assert template.render(MESSAGES) == "<|bos|>system: sé brief\nuser: hi\nassistant:"


@pytest.mark.parametrize("where", ["string", "named-list", "jinja-file"])
def test_the_folder_template_is_used(byte_model, tmp_path, where):
    folder = _folder_with(byte_model, tmp_path,
                          template_config={"string": TEMPLATE,
                                           "named-list": [{"name": "default", "template": TEMPLATE},
                                                          {"name": "tool_use", "template": "x"}],
                                           "jinja-file": None}[where],
                          jinja_file=TEMPLATE if where == "jinja-file" else None)
    template = ChatTemplate.for_model(str(folder), byte_tokenizer())
    assert template.render(MESSAGES) == RENDERED
    with pytest.raises(ChatTemplateError, match="cannot be the assistant"):
        template.render([{"role": "assistant", "content": "x"}])


def test_templates_run_in_a_sandbox():
    template = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, "test")
    with pytest.raises(ChatTemplateError, match="unsafe|access"):
        template.render(MESSAGES)


def test_chat_over_http_with_the_folder_template(byte_model, tmp_path):
    folder = _folder_with(byte_model, tmp_path, template_config=TEMPLATE)
    base = {"max_tokens": 3, "temperature": 0, "ignore_eos": True, "return_token_ids": True}

    async def go(url):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            ok = await post(s, url + "/v1/chat/completions", {"messages": MESSAGES, **base})
            bad = await post(s, url + "/v1/chat/completions",
                             {"messages": [{"role": "assistant", "content": "x"}], **base})
            return ok, bad

    with start_server(engine_config(folder)) as srv:
        (status, body), (bad_status, bad) = run(go(srv.url))
    assert status == 200
    ids = body["choices"][0]["prompt_token_ids"]
    assert ids == byte_tokenizer().encode(RENDERED, add_special_tokens=False)
    assert ids[0] == 256 and ids.count(257) == 2   # bos and eos became their special ids
    assert bad_status == 400 and bad["error"]["param"] == "messages"
    assert "cannot be the assistant" in bad["error"]["message"]
