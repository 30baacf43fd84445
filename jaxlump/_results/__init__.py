"""Stage 6, results: the info records, the certificate, accounting (parameters, FLOPs, latency) and plots."""
