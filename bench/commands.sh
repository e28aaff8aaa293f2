# The commands bench/run times and bench/verify-identical uses, relative to the
# repository root (sourced by both; bash).
# shellcheck shell=bash
S=lab/.state-bench
# FOOBAR_INFRA: another foobar-infra binary to measure (default: the release build).
FOOBAR=${FOOBAR_INFRA:-target/release/foobar-infra}
ANSIBLE_ENV="ANSIBLE_CONFIG=bench/ansible/ansible.cfg"
PLAYBOOK="bench/.venv/bin/ansible-playbook -i $S/ansible-hosts.yml bench/ansible/site.yml"
PYINFRA="bench/.venv/bin/pyinfra $S/pyinfra_inventory.py bench/pyinfra/deploy.py"

CMD_FOOBAR_APPLY="$FOOBAR apply $S/foobar.yaml"
CMD_ANSIBLE_APPLY="$ANSIBLE_ENV $PLAYBOOK"
CMD_PYINFRA_APPLY="bench/.venv/bin/pyinfra -y $S/pyinfra_inventory.py bench/pyinfra/deploy.py"
# Dry runs. foobar-infra diff exits 2 when changes are pending: accepted, 1 is not.
CMD_FOOBAR_DIFF="$FOOBAR diff $S/foobar.yaml || [ \$? -eq 2 ]"
CMD_ANSIBLE_DIFF="$ANSIBLE_ENV $PLAYBOOK --check --diff"
CMD_PYINFRA_DIFF="$PYINFRA --dry --diff"
# The floor: a fresh `ssh HOST true` to every host in parallel, same ssh_config.
CMD_FLOOR="bench/lab floor"
# The same through foobar-infra's TCP connector as ProxyCommand (src/remote/connector.rs).
CMD_FLOOR_CONNECTOR="bench/lab floor --connector"
