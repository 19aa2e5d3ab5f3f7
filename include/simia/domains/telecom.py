"""The tau2-bench telecom domain: the agent's 13 tool schemas, ID formats and policy.

The tool schemas are the JSON schemas tau2-bench v1.0.1 sends to the agent model at
evaluation time (generated there from the tool functions' signatures and docstrings).
They must stay byte-for-byte identical to what the evaluated model sees, which is why
they are spelled out here rather than paraphrased.

The policy text is NOT shipped: it is read from a tau2 data directory
(``TAU2_DATA_DIR``) exactly as tau2 assembles it for the agent's system prompt.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from simia.errors import InputError

_CUSTOMER_OWNS_LINE = "ID of the customer who owns the line."


def _param(name: str, description: str, type_: str, **extra: Any) -> dict[str, Any]:
    """A parameter schema as pydantic (and therefore tau2) renders it."""
    schema: dict[str, Any] = dict(extra)
    schema.update({"description": description, "title": name.replace("_", " ").title()})
    schema["type"] = type_
    return schema


def _tool(name: str, description: str, params: dict[str, dict[str, Any]],
          required: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "parameters": {
            "properties": params,
            "required": required,
            "title": "parameters",
            "type": "object",
        },
    }


def _line_tool(name: str, description: str, line_description: str) -> dict[str, Any]:
    return _tool(
        name,
        description,
        {
            "customer_id": _param("customer_id", _CUSTOMER_OWNS_LINE, "string"),
            "line_id": _param("line_id", line_description, "string"),
        },
        ["customer_id", "line_id"],
    )


TELECOM_TOOLS: list[dict[str, Any]] = [
    _tool(
        "get_customer_by_phone",
        "Finds a customer by their primary contact or line phone number.",
        {"phone_number": _param("phone_number", "The phone number to search for.", "string")},
        ["phone_number"],
    ),
    _tool(
        "get_customer_by_id",
        "Retrieves a customer directly by their unique ID.",
        {"customer_id": _param("customer_id", "The unique identifier of the customer.", "string")},
        ["customer_id"],
    ),
    _tool(
        "get_customer_by_name",
        "Searches for customers by name and DOB. May return multiple matches if names are "
        "similar,\n\nDOB helps disambiguate.",
        {
            "full_name": _param("full_name", "The full name of the customer.", "string"),
            "dob": _param(
                "dob", "Date of birth for verification, in the format YYYY-MM-DD.", "string"
            ),
        },
        ["full_name", "dob"],
    ),
    _tool(
        "get_details_by_id",
        "Retrieves the details for a given ID.\n\nThe ID must be a valid ID for a Customer, "
        "Line, Device, Bill, or Plan.",
        {"id": _param("id", "The ID of the object to retrieve.", "string")},
        ["id"],
    ),
    _tool(
        "suspend_line",
        "Suspends a specific line (max 6 months).\n\nChecks: Line status must be Active.\n"
        "Logic: Sets line status to Suspended, records suspension_start_date.",
        {
            "customer_id": _param("customer_id", _CUSTOMER_OWNS_LINE, "string"),
            "line_id": _param("line_id", "ID of the line to suspend.", "string"),
            "reason": _param("reason", "Reason for suspension.", "string"),
        },
        ["customer_id", "line_id", "reason"],
    ),
    _line_tool(
        "resume_line",
        "Resumes a suspended line.\n\nChecks: Line status must be Suspended or Pending "
        "Activation.\nLogic: Sets line status to Active, clears suspension_start_date.",
        "ID of the line to resume.",
    ),
    _tool(
        "get_bills_for_customer",
        "Retrieves a list of the customer's bills, most recent first.",
        {
            "customer_id": _param("customer_id", "ID of the customer.", "string"),
            "limit": _param("limit", "Maximum number of bills to return.", "integer", default=12),
        },
        ["customer_id"],
    ),
    _tool(
        "send_payment_request",
        "Sends a payment request to the customer for a specific bill.\n\nChecks:\n"
        "    - Customer exists\n    - Bill exists and belongs to the customer\n"
        "    - No other bills are already awaiting payment for this customer\n"
        "Logic: Sets bill status to AWAITING_PAYMENT and notifies customer.\n"
        "Warning: This method does not check if the bill is already PAID.\n"
        "Always check the bill status before calling this method.",
        {
            "customer_id": _param("customer_id", "ID of the customer who owns the bill.", "string"),
            "bill_id": _param("bill_id", "ID of the bill to send payment request for.", "string"),
        },
        ["customer_id", "bill_id"],
    ),
    _line_tool(
        "get_data_usage",
        "Retrieves current billing cycle data usage for a line, including data\n\n"
        "refueling amount, data limit, and cycle end date.",
        "ID of the line to check usage for.",
    ),
    _line_tool(
        "enable_roaming",
        "Enables international roaming on a line.",
        "ID of the line to enable roaming for.",
    ),
    _line_tool(
        "disable_roaming",
        "Disables international roaming on a line.",
        "ID of the line to disable roaming for.",
    ),
    _tool(
        "transfer_to_human_agents",
        "Transfer the user to a human agent, with a summary of the user's issue.\n\n"
        "Only transfer if\n -  the user explicitly asks for a human agent\n"
        " -  given the policy and the available tools, you cannot solve the user's issue.",
        {"summary": _param("summary", "A summary of the user's issue.", "string")},
        ["summary"],
    ),
    _tool(
        "refuel_data",
        "Refuels data for a specific line, adding to the customer's bill.\n\nChecks: Line "
        "status must be Active, Customer owns the line.\nLogic: Adds data to the line and "
        "charges customer based on the plan's refueling rate.",
        {
            "customer_id": _param("customer_id", _CUSTOMER_OWNS_LINE, "string"),
            "line_id": _param("line_id", "ID of the line to refuel data for.", "string"),
            "gb_amount": _param("gb_amount", "Amount of data to add in gigabytes.", "number"),
        },
        ["customer_id", "line_id", "gb_amount"],
    ),
]

# tau2's agent instruction (llm_agent.py); the Hermes variant is the reference scripts'.
AGENT_INSTRUCTION = (
    "You are a customer service agent that helps the user according to the <policy> "
    "provided below.\nIn each turn you can either:\n- Send a message to the user.\n"
    "- Make a tool call.\nYou cannot do both at the same time.\n\n"
    "Try to be helpful and always follow the policy. Always make sure you generate valid "
    "JSON only."
)
HERMES_INSTRUCTION = AGENT_INSTRUCTION.replace(
    "You are a customer service agent", "You are a telecom customer service agent"
)

_POLICY_FILES = ("main_policy.md", "tech_support_manual.md")
_POLICY_SUBDIRS = (".", "tau2/domains/telecom", "domains/telecom", "telecom")


@dataclass(frozen=True)
class Domain:
    """What the pipeline needs to know about one simulated environment."""

    name: str
    tools: list[dict[str, Any]]
    #: argument name -> (prefix, pattern); digit-only values get the prefix, then must match
    id_formats: dict[str, tuple[str, re.Pattern[str]]] = field(default_factory=dict)
    #: keyword that marks a conversation's system prompt as belonging to this domain
    keyword: str = ""

    @cached_property
    def tools_by_name(self) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in self.tools}

    def find_policy_dir(self, data_dir: str | Path | None = None) -> Path:
        """Locate the folder with ``main_policy.md`` and ``tech_support_manual.md``.

        ``data_dir`` (or ``TAU2_DATA_DIR``) may be tau2's ``data/`` folder, its
        ``tau2/domains/telecom`` folder, or any folder holding the two files.
        """
        raw = data_dir if data_dir not in (None, "") else os.environ.get("TAU2_DATA_DIR")
        if not raw:
            raise InputError(
                None,
                "no tau2 data directory given: set TAU2_DATA_DIR (or pass --tau2-data-dir / "
                "the tau2_data_dir Param) to a folder holding tau2's telecom "
                f"{' and '.join(_POLICY_FILES)}",
            )
        base = Path(raw)
        tried = []
        for sub in _POLICY_SUBDIRS:
            cand = (base / sub).resolve()
            tried.append(str(cand))
            if all((cand / f).is_file() for f in _POLICY_FILES):
                return cand
        raise InputError(
            base,
            f"tau2 telecom policy files {list(_POLICY_FILES)} not found; looked in: "
            + ", ".join(tried),
        )

    def load_policy(self, data_dir: str | Path | None = None) -> str:
        """The domain policy exactly as tau2 v1.0.1 puts it in the agent's system prompt."""
        folder = self.find_policy_dir(data_dir)
        parts = []
        for name in _POLICY_FILES:
            path = folder / name
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(path, f"cannot read policy file: {exc}") from exc
            if not text.strip():
                raise InputError(path, "policy file is empty")
            parts.append(text)
        main, manual = parts
        return (
            "<main_policy>\n" + main + "\n</main_policy>\n"
            "<tech_support_policy>\n" + manual + "\n</tech_support_policy>"
        )


def _id(prefix: str) -> tuple[str, re.Pattern[str]]:
    return prefix, re.compile(rf"^{prefix}\d+$")


TELECOM = Domain(
    name="telecom",
    tools=TELECOM_TOOLS,
    id_formats={"customer_id": _id("C"), "line_id": _id("L"), "bill_id": _id("B")},
    keyword="telecom",
)
