package credcheck

import (
	"strings"
	"testing"
	"time"
)

func TestJudge(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	cert := func(issued, life time.Duration) *Certificate {
		return &Certificate{NotBefore: now.Add(issued), NotAfter: now.Add(issued + life)}
	}
	tok := func(issued, life time.Duration) *Token {
		return &Token{IssuedAt: now.Add(issued), ExpiresAt: now.Add(issued + life), BoundSecret: "meshvm-vm1", BoundUID: "u1"}
	}
	bound := Binding{Checked: true, UID: "u1"}
	for _, tc := range []struct {
		name  string
		f     Facts
		state State
		fail  bool
		says  []string
	}{
		{"fresh", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour), Binding: bound},
			OK, false, []string{"certificate valid until 2026-12-03T11:00:00Z", "token valid until 2027-01-01T11:00:00Z"}},
		{"token past half its life", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-400*time.Hour, 720*time.Hour), Binding: bound},
			Rotate, false, []string{"past half its life", "hostctl vm renew vm1"}},
		{"renewal overdue", Facts{Cert: cert(-20*time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour), Binding: bound},
			RenewalOverdue, false, []string{"should have been renewed by 2026-12-02T10:00:00Z", "hostctl vm logs vm1"}},
		{"off longer than the certificate, token valid", Facts{Cert: cert(-30*time.Hour, 24*time.Hour), Token: tok(-30*time.Hour, 720*time.Hour), Binding: bound},
			CertExpired, false, []string{"expired at 2026-12-02T06:00:00Z", "gets a new one"}},
		{"token expired, certificate valid", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-800*time.Hour, 720*time.Hour), Binding: bound},
			TokenExpired, true, []string{"token expired at", "cannot renew", "hostctl vm onboard vm1"}},
		{"both lapsed", Facts{Cert: cert(-30*time.Hour, 24*time.Hour), Token: tok(-800*time.Hour, 720*time.Hour), Binding: bound},
			Stranded, true, []string{"cannot rejoin", "hostctl vm onboard vm1"}},
		{"secret deleted", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour), Binding: Binding{Checked: true}},
			Revoked, true, []string{"vmns/meshvm-vm1", "was deleted", "will not be renewed", "hostctl vm rm vm1"}},
		{"secret replaced", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour), Binding: Binding{Checked: true, UID: "u2"}},
			Revoked, true, []string{"was replaced"}},
		{"cluster not asked", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour)},
			OK, false, nil},
		{"nothing", Facts{}, Missing, true, []string{"no workload certificate and no istio-token"}},
		{"no certificate yet", Facts{Token: tok(-time.Minute, 720*time.Hour), Binding: bound},
			NoCertificate, false, []string{"no workload certificate yet"}},
		{"no token, certificate valid", Facts{Cert: cert(-time.Hour, 24*time.Hour)},
			TokenExpired, true, []string{"no istio-token"}},
	} {
		tc.f.VM, tc.f.Namespace, tc.f.Now = "vm1", "vmns", now
		v := Judge(tc.f)
		if v.State != tc.state || v.Fail != tc.fail {
			t.Errorf("%s: got %s fail=%v (%s), want %s fail=%v", tc.name, v.State, v.Fail, v.Detail, tc.state, tc.fail)
		}
		all := v.Detail + " | " + v.Fix
		for _, s := range tc.says {
			if !strings.Contains(all, s) {
				t.Errorf("%s: %q does not say %q", tc.name, all, s)
			}
		}
		if v.State != OK && v.Fix == "" {
			t.Errorf("%s: %s without a fix", tc.name, v.State)
		}
	}
}
