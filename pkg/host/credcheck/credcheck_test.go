package credcheck

import (
	"strings"
	"testing"
	"time"
)

func TestJudge(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	// cert is as istiod's CA signs it: NotBefore 2 minutes before it was issued.
	cert := func(issued, life time.Duration) *Certificate {
		return &Certificate{NotBefore: now.Add(issued - 2*time.Minute), NotAfter: now.Add(issued + life)}
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
			Rotate, false, []string{"past half its life", "CredentialsTokenAging"}},
		{"renewal overdue", Facts{Cert: cert(-20*time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour), Binding: bound},
			RenewalOverdue, false, []string{"should have been renewed by 2026-12-02T10:00:00Z", "CredentialsOverdue"}},
		{"off longer than the certificate, token valid", Facts{Cert: cert(-30*time.Hour, 24*time.Hour), Token: tok(-30*time.Hour, 720*time.Hour), Binding: bound},
			CertExpired, false, []string{"expired at 2026-12-02T06:00:00Z", "gets a new one"}},
		{"token expired, certificate valid", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-800*time.Hour, 720*time.Hour), Binding: bound},
			TokenExpired, true, []string{"token expired at", "cannot renew", "CredentialsReissue"}},
		{"both lapsed", Facts{Cert: cert(-30*time.Hour, 24*time.Hour), Token: tok(-800*time.Hour, 720*time.Hour), Binding: bound},
			Stranded, true, []string{"cannot rejoin", "CredentialsReissue"}},
		{"secret deleted", Facts{Cert: cert(-time.Hour, 24*time.Hour), Token: tok(-time.Hour, 720*time.Hour), Binding: Binding{Checked: true}},
			Revoked, true, []string{"vmns/meshvm-vm1", "was deleted", "will not be renewed", "CredentialsRevoked"}},
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
		all := v.Detail + " | " + string(v.Cause.Reason)
		for _, s := range tc.says {
			if !strings.Contains(all, s) {
				t.Errorf("%s: %q does not say %q", tc.name, all, s)
			}
		}
		if v.State != OK && v.Cause.Reason == "" {
			t.Errorf("%s: %s without a fix", tc.name, v.State)
		}
	}
}

// At a 1-minute certificate lifetime pilot-agent rotates 29.4 to 30.6 s
// after issuance (SECRET_GRACE_PERIOD_RATIO 0.5, jitter 0.01) and istiod
// back-dates NotBefore by 2 minutes: a certificate is not overdue at any
// moment before pilot-agent's rotation plus a certificate request, and is
// once it is well past that, still before it expires.
func TestJudgeShortLifetime(t *testing.T) {
	issued := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	c := &Certificate{NotBefore: issued.Add(-2 * time.Minute), NotAfter: issued.Add(time.Minute)}
	tok := &Token{IssuedAt: issued.Add(-10 * time.Minute), ExpiresAt: issued.Add(time.Hour)}
	judge := func(since time.Duration) Verdict {
		return Judge(Facts{VM: "vm1", Namespace: "vmns", Now: issued.Add(since), Cert: c, Token: tok})
	}
	// Every status poll, a second apart, from issuance to the latest
	// rotation (30.6 s) and 10 s for the new certificate to be written.
	for since := time.Duration(0); since <= 40*time.Second; since += time.Second {
		if v := judge(since); v.State == RenewalOverdue || v.Fail {
			t.Errorf("%v after issuance: got %s fail=%v (%s), want not overdue: pilot-agent rotates at 30 s", since, v.State, v.Fail, v.Detail)
		}
	}
	if v := judge(50 * time.Second); v.State != RenewalOverdue {
		t.Errorf("50s after issuance: got %s (%s), want %s", v.State, v.Detail, RenewalOverdue)
	}
	if got, want := judge(0).RenewBy, issued.Add(30600*time.Millisecond+15*time.Second); !got.Equal(want) {
		t.Errorf("renew by %v, want %v (issuance + 0.51 of the lifetime + 15 s)", got, want)
	}
}
