package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

func TestCredentialFindings(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	cert := func(d time.Duration) *agentv1.CertificateInfo { return &agentv1.CertificateInfo{NotAfter: at(d)} }
	tok := func(d time.Duration) *agentv1.TokenInfo { return &agentv1.TokenInfo{ExpiresAt: at(d)} }
	for _, tc := range []struct {
		name   string
		st     *agentv1.GetStatusResponse
		result string
		says   string
	}{
		{"renewing certificate, expired token", &agentv1.GetStatusResponse{WorkloadCertificate: cert(20 * time.Hour), Token: tok(-time.Hour)}, "ok", "renews it"},
		{"nothing valid", &agentv1.GetStatusResponse{WorkloadCertificate: cert(-time.Minute), Token: tok(-time.Hour)}, "fail", "cannot get a certificate"},
		{"no certificate, no token", &agentv1.GetStatusResponse{}, "fail", "expired or missing"},
		{"certificate ending, token expired", &agentv1.GetStatusResponse{WorkloadCertificate: cert(30 * time.Minute), Token: tok(-time.Hour)}, "warn", "drops out"},
		{"no certificate yet, token ending", &agentv1.GetStatusResponse{Token: tok(5 * time.Minute)}, "warn", "token expires in 5m0s"},
		{"no certificate yet, token fine", &agentv1.GetStatusResponse{Token: tok(50 * time.Minute)}, "ok", "token valid"},
	} {
		f := credentialFindings("vm1", tc.st, now)[0]
		if f.Result != tc.result || !strings.Contains(f.Detail, tc.says) {
			t.Errorf("%s: got %s %q", tc.name, f.Result, f.Detail)
		}
		if f.Result != "ok" && !strings.Contains(f.Fix, "hostctl vm onboard vm1") {
			t.Errorf("%s: fix %q does not name vm onboard", tc.name, f.Fix)
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
