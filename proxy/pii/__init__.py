"""PII redaction and restoration helpers for ``proxy.policies.pii``.

engine       the offline Presidio AnalyzerEngine (one per process and configuration)
recognizers  secrets, street addresses, tenant deny-lists and regexes
scanner      one tenant's view of the engine: entities, threshold, extra recognizers
cache        content-hash LRU of scan results (spans only, no text)
parts        every text of a request body that reaches the provider
pseudonyms   keyed-HMAC placeholders, stable across turns and replicas
redact       apply per-entity actions to the spans of one text
restore      put original values back into replies, plain and streamed
"""
