"""`llamakit doctor`: can this server run that checkpoint? Facts, pure rules, active probes, report."""

from llamakit.doctor.checks import BY_NAME, CHECKS, Check, DoctorReport, run_doctor
from llamakit.doctor.facts import Facts, gather
from llamakit.doctor.rules import CheckResult

__all__ = ["BY_NAME", "CHECKS", "Check", "CheckResult", "DoctorReport", "Facts", "gather", "run_doctor"]
