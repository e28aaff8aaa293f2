# The commands bench/run times and bench/verify-identical uses, relative to the
# repository root (sourced by both; bash).
# shellcheck shell=bash
S=lab/.state-bench
FOOBAR=target/release/foobar-infra
ANSIBLE_ENV="ANSIBLE_CONFIG=bench/ansible/ansible.cfg"
PLAYBOOK="bench/.venv/bin/ansible-playbook -i $S/ansible-hosts.yml bench/ansible/site.yml"
PYINFRA="bench/.venv/bin/pyinfra $S/pyinfra_inventory.py bench/pyinfra/deploy.py"

CMD_FOOBAR_APPLY="$FOOBAR apply $S/foobar.yaml"
CMD_ANSIBLE_APPLY="$ANSIBLE_ENV $PLAYBOOK"
CMD_PYINFRA_APPLY="bench/.venv/bin/pyinfra -y $S/pyinfra_inventory.py bench/pyinfra/deploy.py"
# dry runs: foobar-infra exits 2 when changes are pending (hyperfine -i)
CMD_FOOBAR_DIFF="$FOOBAR diff $S/foobar.yaml"
CMD_ANSIBLE_DIFF="$ANSIBLE_ENV $PLAYBOOK --check --diff"
CMD_PYINFRA_DIFF="$PYINFRA --dry --diff"
CMD_FLOOR="bench/lab floor"
