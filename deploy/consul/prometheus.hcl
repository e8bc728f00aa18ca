# Consul ACL policy for both Prometheus replicas (discovery and the consul-server scrape job):
#   consul acl policy create -name prometheus -rules @prometheus.hcl
#   consul acl token create -description "prometheus discovery" -policy-name prometheus
# Put the SecretID in /etc/prometheus/consul.token (mode 0640, group prometheus).
#
# Read only. Reads that lack a permission are silently filtered by Consul rather than
# refused, so a missing rule shows up as missing targets, not as an error.

# /v1/catalog/services, /v1/health/service/<name>
service_prefix "" {
  policy = "read"
}

# /v1/health/service/<name> also filters by node.
node_prefix "" {
  policy = "read"
}

# /v1/agent/self (discovery asks the server for its datacenter when none is configured) and
# /v1/agent/metrics (the consul-server scrape job).
agent_prefix "" {
  policy = "read"
}
