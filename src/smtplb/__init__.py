"""smtplb: an outbound SMTP load balancer and smart relay.

The package reads as the data flow: ``intake`` (SMTP and HTTP submission) →
``spool`` (durable store) → ``routing`` (which pool) → ``balancing`` (which
member) → ``delivery`` (SMTP client, connections, retries, bounces), with
``observability`` beside it.
"""

__version__ = "0.1.0"
