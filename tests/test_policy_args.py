"""policy_args are typed per policy: a wrong type or an unknown key exits 2 naming `policy_args.<key>` and listing
the valid keys (the real CLI, no mocks); valid arguments still run; the openai key never reaches an error."""

from __future__ import annotations

import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openai_server import ScriptedChatServer

from swepost.artifacts import REDACTED
from swepost.errors import BadInput
from swepost.policies.args import args_model, args_table, check_policy_args, policy_args_doc, validate_policy_args
from swepost.policies.base import PolicyError
from swepost.policies.openai import OpenAIPolicy
from swepost.registry import POLICIES, load_component

SECRET = "sk-test-ECHOED-9f3a"
BUILT_IN = {name: load_component(name, POLICIES, "policy") for name in POLICIES}
# per policy: (a wrong type, a value out of bounds), each as a --set
BAD = {
    "openai": ["policy_args.temperature=hot", "policy_args.top_p=0"],
    "hf": ["policy_args.seed=abc", "policy_args.top_p=1.5"],
    "scripted": ["policy_args.per_task=[1]", "policy_args.delay=-1"],
    "oracle": ["policy_args.delay=soon", "policy_args.model=[a]"],
}


@pytest.fixture
def tasks(swepost, repo_root) -> str:
    swepost("tasks", "import", repo_root / "data" / "minicalc_tasks.jsonl", "-n", "mc", check=0)
    return "mc"


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_policy_declares_its_keyword_arguments_typed_and_described(name):
    cls = BUILT_IN[name]
    model = args_model(cls)
    assert model is not None and model.model_config.get("extra") == "forbid"
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert list(model.model_fields) and set(model.model_fields) == set(params)  # one list of keys, not two
    for key, field in model.model_fields.items():
        assert field.description, f"{name}.{key} has no description"
        if params[key].default is inspect.Parameter.empty:
            assert field.is_required(), key
        else:
            assert field.get_default() == params[key].default, key  # the same defaults as the constructor


@pytest.mark.parametrize(("name", "command"), [*((n, "collect") for n in sorted(BUILT_IN)), ("openai", "eval")])
def test_wrong_type_and_unknown_key_exit_2_listing_the_valid_keys(swepost, tasks, name, command):
    wrong_type, out_of_bounds = BAD[name]
    base = ["--set", "policy_args.model=m"] if name in ("openai", "hf") else []
    for bad in (wrong_type, out_of_bounds, "policy_args.tempreature=0.5"):
        r = swepost(command, tasks, "--policy", name, *base, "--set", bad, "--backend", "local")
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        key = bad.split("=")[0].split(".")[1]  # read with the config: "policy_args: KEY: why"
        assert f"policy_args: {key}: " in r.stderr and "Traceback" not in r.stderr, r.stderr
        valid = ", ".join(args_model(BUILT_IN[name]).model_fields)
        assert f"the valid keys of policy '{name}' are: {valid}" in r.stderr, r.stderr
    assert "policy_args: tempreature: unknown key" in r.stderr


def test_values_the_constructor_would_take_are_refused_before_any_request(swepost, tasks):
    """Fails if validation goes: OpenAIPolicy itself takes a negative temperature and a top_p of 0, and would
    send them to the server, episode after episode."""
    with ScriptedChatServer([], default={"content": "", "tool_calls": [{"name": "submit", "arguments": {}}]}) as server:
        for bad in ("policy_args.temperature=-0.5", "policy_args.top_p=0", "policy_args.max_retries=-1"):
            r = swepost("collect", tasks, "--policy", "openai", "--model", "m", "--limit", "1", "--backend", "local",
                        "--set", f"policy_args.base_url={server.base_url}", "--set", bad)
            key = bad.split("=")[0].split(".")[1]
            assert r.returncode == 2 and f"policy_args: {key}: Input should be" in r.stderr, r.stderr
        assert server.requests == []


def test_a_recipe_with_bad_policy_args_fails_validation_naming_file_line_and_key(swepost, tmp_path):
    """rft checks its policy_args when the recipe is read (`model` is set per round, so it is not asked for)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  - name: rft\n    stage: rft\n    config:\n      tasks: t\n      model: m\n"
                      "      policy: hf\n      policy_args:\n        temperature: hot\n        top_k: 5\n")
    r = swepost("recipes", "validate", recipe)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "r.yaml:9: stages[0].config.policy_args: temperature: Input should be a valid number" in r.stderr
    assert "top_k: unknown key" in r.stderr and "the valid keys of policy 'hf' are: model, temperature" in r.stderr
    recipe.write_text(recipe.read_text().replace("hot", "0.7").replace("top_k: 5", "top_p: 0.9"))
    assert swepost("recipes", "validate", recipe).returncode == 0


def test_collect_and_eval_check_their_policy_args_as_the_recipe_is_read(swepost, tmp_path):
    recipe = tmp_path / "r.yaml"
    for stage in ("collect", "eval"):
        recipe.write_text(f"name: r\nstages:\n  - name: s\n    stage: {stage}\n    config:\n      tasks: t\n"
                          "      policy: openai\n      policy_args: {model: m, temprature: 0.5}\n")
        r = swepost("recipes", "validate", recipe, check=2)
        assert "r.yaml:8: stages[0].config.policy_args: temprature: unknown key" in r.stderr, r.stderr
        assert "the valid keys of policy 'openai' are: model, base_url" in r.stderr
        recipe.write_text(recipe.read_text().replace("temprature", "temperature"))
        swepost("recipes", "validate", recipe, check=0)


def test_valid_args_still_work(swepost, tasks, repo_root, tmp_path):
    mini = ["--repos", repo_root / "data" / "repos", "--backend", "local", "--limit", "1", "--json"]
    script = tmp_path / "s.yaml"
    script.write_text("- tool_calls: [{name: submit}]\n")
    for policy, sets in (("oracle", ["policy_args.delay=0.01"]),
                         ("scripted", [f"policy_args.path={script}", "policy_args.delay=0", "policy_args.model=x"])):
        r = swepost("collect", tasks, "--policy", policy, *[a for s in sets for a in ("--set", s)], *mini)
        assert r.returncode == 0, r.stderr
    submit = {"content": "", "tool_calls": [{"name": "submit", "arguments": {}}]}
    with ScriptedChatServer([], default=submit) as server:
        r = swepost("collect", tasks, "--policy", "openai", "--model", "scripted-model", *mini,
                    "--set", f"policy_args.base_url={server.base_url}", "--set", "policy_args.temperature=0.25",
                    "--set", "policy_args.top_p=0.5", "--set", "policy_args.max_turn_tokens=77",
                    "--set", "policy_args.tool_mode=native", "--set", f"policy_args.api_key={SECRET}")
        assert r.returncode == 0, r.stderr
        sent = server.requests[0]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"], "tools" in sent) == (0.25, 0.5, 77, True)


def test_validate_policy_args_converts_and_passes_plain_policies_through():
    args = validate_policy_args(OpenAIPolicy, {"model": "m", "temperature": "0.5", "api_key": SECRET})
    assert args == {"model": "m", "temperature": 0.5, "api_key": SECRET}  # the keys given, typed; the key usable

    class Plugged:  # a plugged-in policy without Args takes plain keywords, unchecked
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    assert validate_policy_args(Plugged, {"anything": [1]}) == {"anything": [1]}
    assert check_policy_args("mymod:Plugged", {"anything": 1}) == {"anything": 1}  # not imported to read a config
    with pytest.raises(BadInput) as e:
        validate_policy_args(OpenAIPolicy, {"temperature": 0.1, "api_key": [SECRET]}, key="stages.x.policy_args")
    text = str(e.value)
    assert "stages.x.policy_args.model: required, but not given" in text
    assert "stages.x.policy_args.api_key: Input should be a valid string" in text and SECRET not in text
    assert validate_policy_args(OpenAIPolicy, {"temperature": 0.1}, later=("model",)) == {"temperature": 0.1}
    with pytest.raises(BadInput, match="max_turn_tokens \\(5\\) and max_tokens \\(6\\) are the same setting"):
        validate_policy_args(OpenAIPolicy, {"model": "m", "max_turn_tokens": 5, "max_tokens": 6})


def test_the_readme_tables_are_the_models(repo_root):
    doc = policy_args_doc()
    for name, cls in BUILT_IN.items():
        assert f"### `{name}`" in doc and args_table(cls) in doc
    assert "| `api_key` | str (secret) | none |" in args_table(OpenAIPolicy)
    assert "| `top_p` | float, > 0, ≤ 1 | `1.0` |" in args_table(OpenAIPolicy)
    readme = (repo_root / "README.md").read_text()
    for cls in BUILT_IN.values():
        assert args_table(cls) in readme, f"README's table of {cls.name} differs from {cls.__name__}.Args"


# -- the key never reaches an error ---------------------------------------------------------------------------

class EchoHeaders(BaseHTTPRequestHandler):
    """Answers every chat request with an error whose body repeats the request's Authorization header, as some
    proxies and debugging servers do; `status` alternates 500 (retried) and 400 (refused)."""

    statuses: list[int] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 404 if self.path.endswith("/tokenize") else (self.statuses.pop(0) if self.statuses else 400)
        body = json.dumps({"error": {"message": f"rejected request with Authorization: "
                                                f"{self.headers.get('Authorization')}"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoHeaders)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _chain(e: BaseException | None) -> str:
    out = ""
    while e is not None:
        out += f"{e!r} {e}\n"
        e = e.__cause__ or e.__context__
    return out


@pytest.mark.parametrize("statuses", [[400], [500, 500]], ids=["refused-400", "gave-up-after-500"])
@pytest.mark.parametrize("from_env", [False, True], ids=["api_key", "OPENAI_API_KEY"])
def test_an_echoed_key_is_cut_out_of_the_policy_error(echo_server, statuses, from_env, monkeypatch):
    EchoHeaders.statuses = list(statuses)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET if from_env else "sk-not-this-one")
    policy = OpenAIPolicy(model="m", base_url=echo_server, api_key=None if from_env else SECRET, max_retries=1,
                          backoff=0.01)
    with pytest.raises(PolicyError) as e:
        policy.reply([{"role": "user", "content": "hi"}], [])
    assert f"Authorization: Bearer {REDACTED}" in str(e.value)  # the server did echo it, and it was cut
    assert SECRET not in _chain(e.value)
    policy.close()


def test_an_echoed_key_reaches_no_trajectory_file_or_output(swepost, tasks, echo_server, home, repo_root):
    EchoHeaders.statuses = [500]
    r = swepost("collect", tasks, "--policy", "openai", "--model", "m", "--limit", "2", "--backend", "local",
                "--repos", repo_root / "data" / "repos", "--set", f"policy_args.base_url={echo_server}",
                "--set", f"policy_args.api_key={SECRET}", "--set", "policy_args.max_retries=1",
                "--set", "policy_args.backoff=0.01")
    assert r.returncode == 1 and "policy_error" in r.stderr + r.stdout, r.stderr  # every episode failed
    assert SECRET not in r.stdout + r.stderr
    written = [p for p in Path(home).rglob("*") if p.is_file()]
    episodes = [p for p in written if p.name == "episodes.jsonl"]
    assert episodes and f"Bearer {REDACTED}" in episodes[0].read_text()  # the error is recorded, the key cut out
    assert [str(p) for p in written if SECRET.encode() in p.read_bytes()] == []
