"""Heap's own reference material, copied as literals (github heap/heap-api-reference, read-only mirror).

`SYNC_JSON` and `DRAIN_JSON` are `bin/data/sync.json` and `bin/data/drain.json` byte for byte. The signed
vectors were computed outside this code base, once, and pasted here: the compact bodies with node
(`JSON.stringify`, as `bin/generateTestHeapHeaders.js` builds them: `id_token` set to "CustomerIdToken", which
keeps its place in sync.json and is appended last to drain.json), the digests with node's crypto and
checked with `printf '%s' "$ts$body" | openssl dgst -sha256 -hmac "$secret"` (hex) and `... -binary | base64`.
"""

SECRET = "heap-kat-secret-2026"
TS_MS = 1764892800123  # 2025-12-05T00:00:00.123Z, in milliseconds as Heap signs

SYNC_JSON = (
    b'{\n'
    b'  "id_token": "CustomerIdToken",\n'
    b'  "action_type": "segment.users.sync",\n'
    b'  "customer_config": {\n'
    b'    "fields": [\n'
    b'      {\n'
    b'        "field_id": "workspace",\n'
    b'        "field_display_name": "Workspace",\n'
    b'        "value": {\n'
    b'          "id": "workspace_1",\n'
    b'          "display_name": "Workspace 1"\n'
    b'        }\n'
    b'      }\n'
    b'    ]\n'
    b'  },\n'
    b'  "data": {\n'
    b'    "segment": {\n'
    b'      "id": 1338065,\n'
    b'      "name": "Free Customers"\n'
    b'    },\n'
    b'    "sync_info": {\n'
    b'      "page_number": 1,\n'
    b'      "total_pages": 1,\n'
    b'      "sync_task_id": "FreeCustomersSync"\n'
    b'    },\n'
    b'    "remove": [\n'
    b'      {\n'
    b'        "id": "user1@email.com"\n'
    b'      },\n'
    b'      {\n'
    b'        "id": "user2@email.com"\n'
    b'      }\n'
    b'    ],\n'
    b'    "add": [\n'
    b'      {\n'
    b'        "id": "user3@email.com"\n'
    b'      },\n'
    b'      {\n'
    b'        "id": "user4@email.com"\n'
    b'      }\n'
    b'    ]\n'
    b'  }\n'
    b'}\n'
)

DRAIN_JSON = (
    b'{\n'
    b'  "action_type": "segment.users.drain",\n'
    b'  "customer_config": {\n'
    b'    "fields": [\n'
    b'      {\n'
    b'        "field_id": "workspace",\n'
    b'        "field_display_name": "Workspace",\n'
    b'        "value": {\n'
    b'          "id": "workspace_1",\n'
    b'          "display_name": "Workspace 1"\n'
    b'        }\n'
    b'      }\n'
    b'    ]\n'
    b'  },\n'
    b'  "data": {\n'
    b'    "segment": {\n'
    b'      "id": 1338065,\n'
    b'      "name": "Segment To Drain"\n'
    b'    }\n'
    b'  }\n'
    b'}\n'
)

# JSON.stringify of sync.json with id_token "CustomerIdToken" (what the reference generator sends).
SYNC_COMPACT = (
    b'{"id_token":"CustomerIdToken","action_type":"segment.users.sync","customer_config":{"fields":[{"fiel'
    b'd_id":"workspace","field_display_name":"Workspace","value":{"id":"workspace_1","display_name":"Works'
    b'pace 1"}}]},"data":{"segment":{"id":1338065,"name":"Free Customers"},"sync_info":{"page_number":1,"t'
    b'otal_pages":1,"sync_task_id":"FreeCustomersSync"},"remove":[{"id":"user1@email.com"},{"id":"user2@em'
    b'ail.com"}],"add":[{"id":"user3@email.com"},{"id":"user4@email.com"}]}}'
)
SYNC_HMAC_BASE64 = "lStQJz836sxsZzjYmYNicw3lcYLBEdIa4YH+4/jge48="
SYNC_HMAC_HEX = "952b50273f37eacc6c6738d8998362730de57182c111d21ae181fee3f8e07b8f"

# JSON.stringify of drain.json with id_token "CustomerIdToken" appended last.
DRAIN_COMPACT = (
    b'{"action_type":"segment.users.drain","customer_config":{"fields":[{"field_id":"workspace","field_dis'
    b'play_name":"Workspace","value":{"id":"workspace_1","display_name":"Workspace 1"}}]},"data":{"segment'
    b'":{"id":1338065,"name":"Segment To Drain"}},"id_token":"CustomerIdToken"}'
)
DRAIN_HMAC_BASE64 = "ILGc5oGeW7uguHSOzndC2B3clEhmwkQjHNj7Fq77eCU="
DRAIN_HMAC_HEX = "20b19ce6819e5bbba0b8748ece7742d81ddc944866c244231cd8fb16aefb7825"

# drain.json as it is in the repository (no id_token), signed the way the reference validator checks it:
# over JSON.stringify of the parsed body.
DRAIN_JSON_HMAC_BASE64 = "JwIKk0X0mffoStnyiwHaG64qVzKv20vZ1KYudyAaHIk="

# A page sent with spaces and numbers JSON.stringify rewrites (1.0 -> 1, 1e-7, an integer beyond 2^53),
# escapes and an arbitrary sync_task_id; Heap's signature covers the compact form, computed by node.
TRICKY_PAGE = (
    b'{ "id_token": "7a36ae58-c4b9-11eb-8529-0242ac130003", "action_type": "segment.users.sync",\n'
    b'  "customer_config": {"fields": [{"field_id": "weight", "value": {"id": "w", "ratio": 1.0, '
    b'"tiny": 1e-7, "big": 12345678901234567890}}]},\n'
    b'  "data": {"segment": {"id": 1338065, "name": "Free Customers \xc3\xbc"},\n'
    b'           "sync_info": {"page_number": 1, "total_pages": 1, '
    b'"sync_task_id": "Free Customers/../x \\u00fc"},\n'
    b'           "remove": [], "add": [{"id": "zo\\u00eb@example.com"}, {"id": "usr_42"}]} }'
)
TRICKY_PAGE_COMPACT = (
    b'{"id_token":"7a36ae58-c4b9-11eb-8529-0242ac130003","action_type":"segment.users.sync","customer_conf'
    b'ig":{"fields":[{"field_id":"weight","value":{"id":"w","ratio":1,"tiny":1e-7,"big":123456789012345670'
    b'00}}]},"data":{"segment":{"id":1338065,"name":"Free Customers \xc3\xbc"},"sync_info":{"page_numb'
    b'er":1,"total_pages":1,"sync_task_id":"Free Customers/../x \xc3\xbc"},"remove":[],"add":[{"id":"zo'
    b'\xc3\xab@example.com"},{"id":"usr_42"}]}}'
)
TRICKY_PAGE_HMAC_BASE64 = "/xTL1awgv52ATqbBGi2HW4stlos3wUiayn8CXpc2Ikc="

# JSON.stringify(JSON.parse(TRICKY_JSON)) in node: number formatting, index-like keys first, escapes.
TRICKY_JSON = (
    b'{"b": 1.0, "a": [1e21, 1.5e-7, 12345678901234567890, 0.000001, -0.0, 1e-7, 100, 2.50, 1E+2, 12345678'
    b'9012345680000, 0.1], "10": "\xc3\xa9/\xe2\x80\xa8\\u0001\\n\\"", "2": true, '
    b'"s": "\\ud83d\\ude00 \\u00e9", "n": null, "2": false}'
)
TRICKY_JSON_STRINGIFIED = (
    '{"2":false,"10":"é/\u2028\\u0001\\n\\"","b":1,"a":[1e+21,1.5e-7,12345678901234567000,0.000001,0,1e-7,100,'
    '2.5,100,123456789012345680000,0.1],"s":"😀 é","n":null}'
)
