"""The lab: real keylime servers, tenant and a software TPM on this machine, run from what the program declares."""
