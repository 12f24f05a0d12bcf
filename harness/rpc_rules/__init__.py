"""One table of SPDK's RPCs: `table.RULES`, one `rule.Rule` per method, and the name sets derived from it.

Data only: it imports nothing from the harness, so rpc, model, sim, storm and minimize all read it. (This
package imports none of its modules: import `harness.rpc_rules.table` and `harness.rpc_rules.rule`.)
"""
