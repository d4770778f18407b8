package envfile

import (
	"strings"
	"testing"
)

// A cluster.env as `istioctl x workload entry configure` writes it
// (shellescape.Quote: nearly everything single-quoted).
const clusterEnv = `CANONICAL_REVISION='latest'
CANONICAL_SERVICE='external-app'
ISTIO_INBOUND_PORTS='8000'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_METAJSON_LABELS='{"app":"external-app","service.istio.io/canonical-name":"external-app","service.istio.io/canonical-revision":"latest"}'
ISTIO_META_AUTO_REGISTER_GROUP='external-app'
ISTIO_META_CLUSTER_ID='test'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_META_NETWORK='vm-network'
ISTIO_NAMESPACE='vmns'
ISTIO_SERVICE='external-app.vmns'
ISTIO_SERVICE_CIDR='*'
POD_NAMESPACE='vmns'
QUOTED='it'"'"'s'
SERVICE_ACCOUNT='vmsa'
TRUST_DOMAIN='cluster.local'
`

func TestParseIstioClusterEnv(t *testing.T) {
	env := map[string]string{}
	if err := Parse("cluster.env", []byte(clusterEnv), env); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ key, want string }{
		{"ISTIO_METAJSON_LABELS", `{"app":"external-app","service.istio.io/canonical-name":"external-app","service.istio.io/canonical-revision":"latest"}`},
		{"ISTIO_SERVICE_CIDR", "*"},
		{"QUOTED", "it's"},
		{"ISTIO_LOCAL_EXCLUDE_PORTS", "22,15090,15021,15020"},
	}
	for _, tt := range tests {
		if got := env[tt.key]; got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.key, got, tt.want)
		}
	}
}

func TestParseShellForms(t *testing.T) {
	tests := []struct {
		name, in, key, want string
	}{
		{"unquoted", "A=b", "A", "b"},
		{"export", "export A=b", "A", "b"},
		{"double quotes with escapes", `A="x\"y\\z \$HOME"`, "A", `x"y\z $HOME`},
		{"expansion of earlier var", "B=1\nA=\"${B}-$B\"", "A", "1-1"},
		{"comment after value", "A='v' # note", "A", "v"},
		{"empty", "A=", "A", ""},
		{"crlf", "A='v'\r\n", "A", "v"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			if err := Parse("f", []byte(tt.in), env); err != nil {
				t.Fatal(err)
			}
			if env[tt.key] != tt.want {
				t.Errorf("got %q, want %q", env[tt.key], tt.want)
			}
		})
	}
}

func TestParseRefusesCommands(t *testing.T) {
	for _, in := range []string{"A=$(id)", "A=`id`", "A=\"$(id)\"", "A=b; rm -rf /", "A=b c", "A='open", "not an assignment", "1A=x"} {
		if err := Parse("f", []byte(in), map[string]string{}); err == nil {
			t.Errorf("%q: got no error, want a refusal", in)
		}
	}
}

func TestFormatSystemdRoundTrip(t *testing.T) {
	env := map[string]string{"A": "plain", "B": `it's "$HOME" \ok`, "C": ""}
	out, err := FormatSystemd(env)
	if err != nil {
		t.Fatal(err)
	}
	want := "A='plain'\nB=\"it's \\\"\\$HOME\\\" \\\\ok\"\nC=''\n"
	if string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
	// Our own parser reads systemd's quoting the same way for these forms.
	back := map[string]string{}
	if err := Parse("sidecar.env", out, back); err != nil {
		t.Fatal(err)
	}
	for k, v := range env {
		if back[k] != v {
			t.Errorf("%s: got %q back, want %q", k, back[k], v)
		}
	}
	if _, err := FormatSystemd(map[string]string{"A": "two\nlines"}); err == nil || !strings.Contains(err.Error(), "spans lines") {
		t.Errorf("got %v, want a multi-line refusal", err)
	}
}
