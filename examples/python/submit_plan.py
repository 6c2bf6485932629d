#!/usr/bin/env python3
"""Submit a compute plan to baton over AMQP, then follow it through the HTTP API.

A complete producer in one file, with the standard library and pika only:

1. register the functions the plan runs (``function.register``),
2. publish the plan (``plan.submit``) to the exchange ``baton.submit``, with publisher
   confirms and ``mandatory``, and wait for the dispatcher's reply on RabbitMQ's direct
   reply-to,
3. poll ``GET /api/v1/compute_plans/{key}`` until the plan's status is terminal.

Without ``--plan`` it builds a small plan itself: two ``greet`` tasks, each writing a
greeting as a model, and a ``shout`` child of each that reads it. With ``--plan FILE`` it
submits that ``plan.submit`` body, after registering the ``function.register`` bodies given
with ``--function FILE``.

Exit status: 0 when the plan is DONE; 1 when the dispatcher refused a message; 2 for bad
usage or an unreadable file; 3 when the plan ended FAILED, CANCELED or EMPTY; 4 when RabbitMQ
or the HTTP API could not be reached, or an answer did not come in time.

See docs/producers.md for the recipe this script follows.
"""

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pika
import pika.exceptions

# Where producers publish; the routing key is the message's type.
SUBMIT_EXCHANGE = "baton.submit"
# RabbitMQ's direct reply-to pseudo-queue: no reply queue to declare or delete.
REPLY_TO = "amq.rabbitmq.reply-to"
# The version of baton's message formats this producer writes (header x-baton-schema-version).
SCHEMA_VERSION = 1
# Sent as the AMQP app_id: which program sent a message, shown in the management UI.
APP_ID = "baton-python-producer"
# Plan statuses after which nothing runs any more.
TERMINAL = ("DONE", "FAILED", "CANCELED")
# A namespace for the keys of the example's functions, derived from their content.
EXAMPLE_NAMESPACE = uuid.UUID("6f0f5c3e-7d1a-4c7e-9a59-2f4f0c1b6a10")

EXIT_DONE = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_DONE = 3
EXIT_UNREACHABLE = 4


class Refused(Exception):
    """The dispatcher answered a message with ``"outcome": "rejected"``."""

    def __init__(self, kind, reply):
        super().__init__(f"{kind} refused: {reply.get('error')}")
        self.kind = kind
        self.reply = reply


class Unreachable(Exception):
    """RabbitMQ or the HTTP API could not be reached, or did not answer in time."""


class Producer:
    """One AMQP connection that sends baton messages and waits for their replies."""

    def __init__(self, amqp_url, reply_timeout):
        parameters = pika.URLParameters(amqp_url)
        # RabbitMQ refuses a message whose user_id is not the connection's user: send ours
        # (none with certificate authentication, whose user name the URL does not tell).
        self.user = getattr(parameters.credentials, "username", None)
        self.reply_timeout = reply_timeout
        self.connection = pika.BlockingConnection(parameters)
        self.channel = self.connection.channel()
        # Publisher confirms: basic_publish returns only once RabbitMQ stored the message,
        # and raises NackError if it refused it, UnroutableError if nothing could route it.
        self.channel.confirm_delivery()
        # Direct reply-to: consume the pseudo-queue, with automatic acks, on the same channel
        # that publishes the requests, before publishing them.
        self.replies = {}
        self.channel.basic_consume(
            queue=REPLY_TO, on_message_callback=self._on_reply, auto_ack=True
        )

    def _on_reply(self, _channel, _method, properties, body):
        # Replies are matched to requests by correlation_id (the request's message_id).
        if properties.correlation_id is not None:
            self.replies[properties.correlation_id] = (properties.type, body)

    def request(self, kind, body):
        """Publishes ``body`` as a message of type ``kind`` and returns the decoded reply.

        The message id is derived from the content (``<kind>:<SHA-256 of the body>``): the
        dispatcher answers an id it has seen with the answer it gave the first time, so sending
        the same content again, after a timeout or a crash, stores nothing twice, while a
        corrected message is a new request.
        """
        payload = json.dumps(body).encode("utf-8")
        message_id = f"{kind}:{hashlib.sha256(payload).hexdigest()}"
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            type=kind,
            message_id=message_id,
            reply_to=REPLY_TO,
            user_id=self.user,
            app_id=APP_ID,
            timestamp=int(time.time()),
            headers={"x-baton-schema-version": SCHEMA_VERSION},
        )
        try:
            self.channel.basic_publish(
                exchange=SUBMIT_EXCHANGE,
                routing_key=kind,
                body=payload,
                properties=properties,
                mandatory=True,
            )
        except pika.exceptions.UnroutableError as error:
            # Returned: no queue is bound for this type (a missing exchange closes the channel).
            raise Unreachable(f"{kind} could not be routed (a misspelt type?): {error}")
        except pika.exceptions.NackError as error:
            raise Unreachable(f"RabbitMQ refused to store {kind}: {error}")
        deadline = time.monotonic() + self.reply_timeout
        while message_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(
                    f"no reply to {kind} {message_id} within {self.reply_timeout:g} s; "
                    "sending the same content again gets the dispatcher's answer"
                )
            # Runs the I/O loop, and so _on_reply, for at most `left` seconds.
            self.connection.process_data_events(time_limit=min(left, 1.0))
        reply_kind, reply_body = self.replies.pop(message_id)
        reply = json.loads(reply_body)
        print(f"{kind} {message_id} -> {reply_kind}: {json.dumps(reply)}", flush=True)
        if reply.get("outcome") != "accepted":
            raise Refused(kind, reply)
        return reply

    def close(self):
        """Closes the connection."""
        if self.connection.is_open:
            self.connection.close()


class Api:
    """The read side of baton's HTTP API, with urllib."""

    def __init__(self, base_url, token):
        self.base = base_url.rstrip("/") + "/api/v1"
        self.token = token

    def get(self, path, missing_ok=False, **query):
        """GETs ``path`` (under /api/v1) and returns the decoded JSON body; ``None`` for a 404
        when ``missing_ok``."""
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404 and missing_ok:
                return None
            # Every error of the API is {"error", "details": [{path, message}]}.
            body = error.read().decode(errors="replace")
            raise Unreachable(f"GET {path}: HTTP {error.code}: {body}")
        except (urllib.error.URLError, OSError) as error:
            raise Unreachable(f"GET {path}: {error}")

    def current_organization(self):
        """The organization the deployment acts as: the one listed with ``is_current``."""
        page = 1
        while True:
            listed = self.get("/organizations", page=page, page_size=1000)
            for organization in listed["results"]:
                if organization.get("is_current"):
                    return organization["id"]
            if page * listed["page_size"] >= listed["count"]:
                raise Unreachable("the API lists no current organization")
            page += 1

    def wait_for_plan(self, key, wait, poll):
        """Polls plan ``key`` until its status is terminal (or EMPTY); returns the plan."""
        deadline = time.monotonic() + wait
        shown = None
        while True:
            plan = self.get(f"/compute_plans/{key}")
            counters = plan["counters"]
            line = (
                f"plan {key}: {plan['status']} "
                f"({counters['done_count']} of {counters['task_count']} tasks done, "
                f"{counters['doing_count']} running, {counters['failed_count']} failed)"
            )
            if line != shown:
                print(line, flush=True)
                shown = line
            if plan["status"] in TERMINAL or plan["status"] == "EMPTY":
                return plan
            if time.monotonic() >= deadline:
                raise Unreachable(f"plan {key} is still {plan['status']} after {wait:g} s")
            time.sleep(poll)


def example_functions(organization):
    """The two functions of the example plan, as ``function.register`` bodies.

    Steps are argv arrays run without a shell (``sh -c`` is a program like any other);
    ``{parameters.x}``, ``{inputs.x}`` and ``{outputs.x}`` are replaced by the worker inside
    single arguments.
    """
    public = {"process": {"public": True, "authorized_ids": [organization]}}
    greet = {
        "name": "greet",
        "summary": "Writes a greeting as its model.",
        "permissions": public,
        "parameters": [{"key": "who", "description": "Whom to greet."}],
        "outputs": [{"identifier": "greeting", "kind": "MODEL"}],
        "steps": [
            {
                "name": "greet",
                "command": [
                    "sh", "-c", 'echo "hello, $1" > "$2"', "sh",
                    "{parameters.who}", "{outputs.greeting}",
                ],
            }
        ],
    }
    shout = {
        "name": "shout",
        "summary": "Prints its parent's greeting in capitals.",
        "permissions": public,
        "inputs": [{"identifier": "greeting", "kind": "MODEL"}],
        "steps": [
            {
                "name": "shout",
                "command": ["sh", "-c", 'tr a-z A-Z < "$1"', "sh", "{inputs.greeting}"],
            }
        ],
    }
    for function in (greet, shout):
        # The key is derived from the content: the same function gets the same key every run,
        # and a changed one a new key.
        canonical = json.dumps(function, sort_keys=True).encode("utf-8")
        function["key"] = str(uuid.uuid5(EXAMPLE_NAMESPACE, hashlib.sha256(canonical).hexdigest()))
    return greet, shout


def example_plan(organization, greet, shout, names):
    """A plan with a ``greet`` task per name and a ``shout`` child of each, fresh keys."""
    output = {"permissions": {"process": {"public": True, "authorized_ids": [organization]}}}
    tasks = []
    for who in names:
        parent = str(uuid.uuid4())
        tasks.append(
            {
                "key": parent,
                "function_key": greet["key"],
                "name": f"greet {who}",
                "worker": organization,
                "parameters": {"who": who},
                "outputs": {"greeting": output},
            }
        )
        tasks.append(
            {
                "key": str(uuid.uuid4()),
                "function_key": shout["key"],
                "name": f"shout {who}",
                "worker": organization,
                "inputs": [
                    {
                        "identifier": "greeting",
                        "parent_task_key": parent,
                        "parent_task_output_identifier": "greeting",
                    }
                ],
            }
        )
    return {
        "key": str(uuid.uuid4()),
        "name": "hello from python",
        "tag": "examples/python",
        "metadata": {"producer": APP_ID},
        "tasks": tasks,
    }


def read_json(path):
    """The JSON document in file ``path``."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def write_messages(directory, functions, plan):
    """Writes each function and the plan to a file of ``directory``, to edit, validate against
    schemas/ and submit later with ``--function`` and ``--plan``."""
    os.makedirs(directory, exist_ok=True)
    files = [(f"function-{function['name']}.json", function) for function in functions]
    files.append(("plan.json", plan))
    for name, body in files:
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as file:
            json.dump(body, file, indent=2)
            file.write("\n")
        print(path)


def arguments():
    """The command line, with defaults from the environment."""
    parser = argparse.ArgumentParser(
        description="Submit a compute plan to baton over AMQP and wait until it is done.",
        epilog="Exit status: 0 DONE, 1 refused, 2 usage, 3 FAILED, CANCELED or EMPTY, "
        "4 unreachable or timed out.",
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("BATON_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        help="RabbitMQ, with the user that publishes (env BATON_AMQP_URL)",
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("BATON_API_URL", "http://127.0.0.1:8080"),
        help="baton's HTTP API, without /api/v1 (env BATON_API_URL)",
    )
    parser.add_argument(
        "--plan", metavar="FILE", help="a plan.submit body to submit instead of the example plan"
    )
    parser.add_argument(
        "--function",
        metavar="FILE",
        action="append",
        default=[],
        help="a function.register body to register first (repeatable)",
    )
    parser.add_argument(
        "--organization",
        default=os.environ.get("BATON_ORGANIZATION"),
        help="the organization that runs the example's tasks (default: the API's current one)",
    )
    parser.add_argument(
        "--greet", metavar="NAME", action="append", help="a name for the example plan (repeatable)"
    )
    parser.add_argument(
        "--reply-timeout", type=float, default=30.0, help="seconds to wait for each reply"
    )
    parser.add_argument(
        "--wait", type=float, default=600.0, help="seconds to wait for the plan to end"
    )
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between status reads")
    parser.add_argument(
        "--write-to",
        metavar="DIR",
        help="write the messages' bodies to DIR (function-<name>.json, plan.json) instead of "
        "sending them; the example plan then needs --organization",
    )
    return parser.parse_args()


def main():
    """Runs the producer; returns the exit status."""
    args = arguments()
    # Authentication of HTTP calls, where the deployment requires it.
    api = Api(args.api_url, os.environ.get("BATON_TOKEN"))
    try:
        functions = [read_json(path) for path in args.function]
        plan = read_json(args.plan) if args.plan else None
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE

    try:
        if plan is None:
            if args.organization is None and args.write_to:
                print("error: --write-to needs --organization for the example", file=sys.stderr)
                return EXIT_USAGE
            organization = args.organization or api.current_organization()
            greet, shout = example_functions(organization)
            functions += [greet, shout]
            plan = example_plan(organization, greet, shout, args.greet or ["python", "baton"])

        if args.write_to:
            write_messages(args.write_to, functions, plan)
            return EXIT_DONE

        producer = Producer(args.amqp_url, args.reply_timeout)
        try:
            for function in functions:
                # A function is registered once: its key names it for good.
                if api.get(f"/functions/{function['key']}", missing_ok=True) is not None:
                    print(f"function {function['name']} {function['key']} is registered already")
                    continue
                producer.request("function.register", function)
            reply = producer.request("plan.submit", plan)
        finally:
            producer.close()
        done = api.wait_for_plan(reply["compute_plan_key"], args.wait, args.poll)
    except Refused as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        for detail in refusal.reply.get("details", []):
            path = detail.get("path") or "(whole message)"
            print(f"  {path}: {detail.get('message')}", file=sys.stderr)
        return EXIT_REFUSED
    except pika.exceptions.AMQPError as error:
        print(f"error: RabbitMQ: {error!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Unreachable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE

    if done["status"] != "DONE":
        print(f"error: plan {done['key']} ended {done['status']}", file=sys.stderr)
        if done.get("failed_task_key"):
            # The first task that failed says why; its log is at /tasks/{key}/logs.
            try:
                task = api.get(f"/tasks/{done['failed_task_key']}")
                print(
                    f"  task {task['key']} ({task.get('name')}): "
                    f"{task.get('error_type')}: {task.get('error_message')}",
                    file=sys.stderr,
                )
            except Unreachable as error:
                print(f"  {error}", file=sys.stderr)
        return EXIT_NOT_DONE
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
