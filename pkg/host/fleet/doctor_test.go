package fleet

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshvm/meshvm/pkg/host/config"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// doctor grades the credential verdict: ok, warn for what heals or wants a
// rotation, fail for what strands the VM; the detail starts with the state.
func TestCredentialFinding(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	cert := func(d time.Duration) *agentv1.CertificateInfo {
		return &agentv1.CertificateInfo{NotBefore: at(d - 24*time.Hour), NotAfter: at(d)}
	}
	tok := func(d time.Duration) *agentv1.TokenInfo {
		return &agentv1.TokenInfo{IssuedAt: at(-time.Hour), ExpiresAt: at(d), BoundSecretName: "meshvm-vm1", BoundSecretUid: "u1"}
	}
	cfg := config.Default()
	for _, tc := range []struct {
		name   string
		st     *agentv1.GetStatusResponse
		uids   map[string]string
		result Result
		prefix string
	}{
		{"both valid", &agentv1.GetStatusResponse{WorkloadCertificate: cert(20 * time.Hour), Token: tok(700 * time.Hour)}, map[string]string{"vm1": "u1"}, "ok", "ok: "},
		{"certificate lapsed while off", &agentv1.GetStatusResponse{WorkloadCertificate: cert(-time.Hour), Token: tok(700 * time.Hour)}, map[string]string{"vm1": "u1"}, "warn", "certificate-expired: "},
		{"revoked", &agentv1.GetStatusResponse{WorkloadCertificate: cert(20 * time.Hour), Token: tok(700 * time.Hour)}, map[string]string{}, "fail", "revoked: "},
		{"stranded", &agentv1.GetStatusResponse{WorkloadCertificate: cert(-time.Minute), Token: tok(-time.Hour)}, map[string]string{"vm1": "u1"}, "fail", "stranded: "},
	} {
		f := credentialFinding(credentialFacts(cfg, "vm1", tc.st, tc.uids, true, now))
		if f.Result != tc.result || !strings.HasPrefix(f.Detail, tc.prefix) {
			t.Errorf("%s: got %s %q", tc.name, f.Result, f.Detail)
		}
		if f.Result != OK && f.Reason == "" {
			t.Errorf("%s: no fix", tc.name)
		}
	}
}

func TestProxySkew(t *testing.T) {
	want := map[string]string{"/usr/local/bin/pilot-agent": "aa", "/usr/local/bin/envoy": "bb"}
	files := []*agentv1.FileStat{
		{Path: "/usr/local/bin/pilot-agent", Exists: true, Sha256: "aa"},
		{Path: "/usr/local/bin/envoy", Exists: true, Sha256: "cc"},
		{Path: "/etc/istio/config/mesh", Exists: true, Sha256: "dd"},
	}
	if got := proxySkew(want, files); got != "/usr/local/bin/envoy" {
		t.Errorf("got %q, want envoy named", got)
	}
	files[1].Sha256 = "bb"
	if got := proxySkew(want, files); got != "" {
		t.Errorf("got %q, want no skew", got)
	}
}
