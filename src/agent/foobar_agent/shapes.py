"""Each op's request fields and their shapes (check.py checks requests against
them). GENERATED from the request types of src/protocol/*.rs: do not edit (a test
compares it; FOOBAR_WRITE_SHAPES=1 cargo test --lib protocol rewrites it)."""

REQUEST_SHAPES = {
    "abort": {"run_id":"str"},
    "commit": {"actions":["list",{"action":"str","check":["opt",{"command":["opt",["list","str"]],"config":["opt","str"],"live":["opt",["enum","haproxy","nginx","mariadb"]],"running":["opt","bool"],"tcp":["opt",["either","str",["list","str"]]],"timeout_s":"int"}],"guard":["opt",{"path":"str","seconds":"int"}],"service":"str"}],"boot":["list",{"enable":"bool","service":"str"}],"deletes":["list","str"],"files":["list","str"],"history":{"boot":["list",{"action":"str","service":"str"}],"files":["list",{"change":"str","path":"str"}],"git_commit":["opt","str"],"host":"str","hosts":["map","str"],"inventory":"str","inventory_hash":"str","result":["opt","str"],"run_id":"str","services":["list",{"action":"str","service":"str"}],"time":"str","tool_version":"str","user":"str"},"manifest":["list",{"group":"str","mode":"str","owner":"str","path":"str","service":"str","sha256":["opt","str"]}],"run_id":"str"},
    "db-catch-up": {"gtid":"str","timeout_s":"int"},
    "db-fence": {},
    "db-primary": {"db":{"database":"str","replication":["opt",{"hash":"str","user":"str"}],"role":"str","schema":["opt","str"],"tables":["list","str"],"users":["list",{"grants":["list","str"],"hash":"str","host":"str","user":"str"}]}},
    "db-promote": {},
    "db-replica-password": {"password":"str","timeout_s":"int"},
    "db-replica-remove": {},
    "db-replica-repair": {"read_only":["opt","bool"],"source":["opt",{"host":"str","password":"str","port":"int","user":"str"}],"start_io":["opt",{"errno":"int"}],"start_sql":["opt",{"errno":"int"}],"timeout_s":"int"},
    "db-replica-start": {"primary":{"host":"str","password":"str","port":"int","user":"str"},"timeout_s":"int"},
    "db-restore-abort": {"database":"str","old":"str","scratch":"str"},
    "db-restore-check": {"database":"str"},
    "db-restore-prepare": {"database":"str","old":"str","scratch":"str"},
    "db-restore-swap": {"database":"str","lock_wait_s":"int","old":"str","scratch":"str","tables":["list","str"]},
    "db-seed-prepare": {"db":{"database":"str","replication":["opt",{"hash":"str","user":"str"}],"role":"str","schema":["opt","str"],"tables":["list","str"],"users":["list",{"grants":["list","str"],"hash":"str","host":"str","user":"str"}]}},
    "db-wait-replica": {"timeout_s":"int"},
    "firewall-confirm": {"run_id":"str"},
    "firewall-guard": {"run_id":"str"},
    "haproxy-counters": {"backend":"str","response_times":["opt",{"ring":"str","since_ms":"int"}]},
    "haproxy-server": {"backend":"str","server":"str","state":["enum","drain","ready","maint"],"timeout_s":"int"},
    "history": {"last":"int"},
    "observe": {"certs":["list","str"],"db":["opt",{"database":"str","replication":["opt",{"hash":"str","user":"str"}],"role":"str","schema":["opt","str"],"tables":["list","str"],"users":["list",{"grants":["list","str"],"hash":"str","host":"str","user":"str"}]}],"haproxy":"bool","max_content":"int","packages":["list","str"],"paths":["map","str"],"ports":["list",{"names":["list","str"],"port":"int","service":"str"}],"release":["opt",{"root":"str"}],"services":["list","str"],"users":["list","str"]},
    "release-switch": {"check":{"host":"str","path":"str","port":"int","timeout_s":"int"},"id":"str","keep":"int","root":"str","service":"str"},
    "release-upload": {"id":"str","root":"str","tar_b64":"str"},
    "rollback": {"actions":["list",{"action":"str","check":["opt",{"command":["opt",["list","str"]],"config":["opt","str"],"live":["opt",["enum","haproxy","nginx","mariadb"]],"running":["opt","bool"],"tcp":["opt",["either","str",["list","str"]]],"timeout_s":"int"}],"guard":["opt",{"path":"str","seconds":"int"}],"service":"str"}],"force":["opt","bool"],"history":{"boot":["list",{"action":"str","service":"str"}],"files":["list",{"change":"str","path":"str"}],"git_commit":["opt","str"],"host":"str","hosts":["map","str"],"inventory":"str","inventory_hash":"str","result":["opt","str"],"run_id":"str","services":["list",{"action":"str","service":"str"}],"time":"str","tool_version":"str","user":"str"},"lock":["opt",{"owner":"str","pid":"int","run_id":"str","started":"num","tool_version":"str"}],"run_id":"str"},
    "stage": {"deletes":["list","str"],"expect":["map",["opt","str"]],"files":["list",{"content_b64":"str","group":"str","mode":"str","owner":"str","path":"str","service":"str"}],"history":{"boot":["list",{"action":"str","service":"str"}],"files":["list",{"change":"str","path":"str"}],"git_commit":["opt","str"],"host":"str","hosts":["map","str"],"inventory":"str","inventory_hash":"str","result":["opt","str"],"run_id":"str","services":["list",{"action":"str","service":"str"}],"time":"str","tool_version":"str","user":"str"},"install":["list","str"],"lock":{"owner":"str","pid":"int","run_id":"str","started":"num","tool_version":"str"},"lock_wait_s":"int","run_id":"str","users":["list","str"],"validate":["list",["tagged","kind",{"blackbox":{"path":"str"},"haproxy":{"path":"str"},"keepalived":{"path":"str"},"mariadb":{"path":"str"},"mysql8":{"path":"str"},"nft":{"path":"str"},"nginx":{"conf":"str","files":["list","str"],"root":"str"},"prometheus":{"path":"str"}}]]},
}
