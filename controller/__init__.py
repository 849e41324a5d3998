"""The attestation controller: keylime enrollment follows the agents that run, failures reach Kubernetes.

enrollment.py is the one definition of "enrolled with the stack's policy" and "attested", shared with the
deploy-time enrollment Command (components/scripts/enroll.py); the rest is the controller's own.
"""
