// Package credcheck judges a VM's mesh credentials as one: the workload
// certificate pilot-agent holds and the istio-token it asks istiod with. The
// sidecar authenticates every certificate request with the token alone
// (PROV_CERT is empty), so a valid token lets a VM that was off for any
// time rejoin, and a revoked or lapsed one stops renewal. The verdict names
// the cause in words, with RFC 3339 times, and a reason the CLI words the
// fix from.
package credcheck

import (
	"fmt"
	"time"

	"github.com/meshvm/meshvm/pkg/reason"
)

// Certificate is the VM's workload certificate.
type Certificate struct {
	NotBefore, NotAfter time.Time
}

// Token is the VM's istio-token.
type Token struct {
	IssuedAt, ExpiresAt time.Time // IssuedAt zero when unknown
	// BoundSecret and BoundUID name the Secret the token dies with; empty
	// for an unbound token.
	BoundSecret, BoundUID string
}

// Binding is what the cluster says of the token's Secret.
type Binding struct {
	Checked bool   // the cluster was asked; false leaves revocation unknown
	UID     string // the Secret's UID now; "" when it does not exist
}

// Facts are what is known of one VM's credentials.
type Facts struct {
	VM        string
	Namespace string // the workload namespace, where the Secret lives
	Now       time.Time
	Cert      *Certificate // nil: none on the VM
	Token     *Token       // nil: none on the VM
	Binding   Binding
}

// State is the verdict's one word, also in the JSON of vm status.
type State string

const (
	OK             State = "ok"
	Rotate         State = "rotate"         // the token is past half its life
	NoCertificate  State = "no-certificate" // none yet, the token is valid
	CertExpired    State = "certificate-expired"
	RenewalOverdue State = "renewal-overdue" // pilot-agent should have renewed by now
	TokenExpired   State = "token-expired"   // the certificate cannot be renewed
	Revoked        State = "revoked"         // the token's Secret is gone or replaced
	Stranded       State = "stranded"        // neither is valid: the VM cannot rejoin
	Missing        State = "missing"         // neither exists on the VM
)

// Verdict is the judgement of a VM's credentials.
type Verdict struct {
	State State
	// Fail means the VM is or will be out of the mesh without a command;
	// a warning (Fail false, a cause set) is worth acting on, not urgent.
	Fail   bool
	Detail string
	// Cause is what the fix is worded from (the VM's name its argument).
	Cause reason.Cause
	// RenewBy is when pilot-agent should have renewed the certificate by,
	// its rotation time and a margin (zero without one; see renewBy).
	RenewBy time.Time
}

// When pilot-agent renews, as Istio's code has it (istio.io/istio at the
// version go.mod pins):
//
//   - security/pkg/pki/util/generate_cert.go, genCertTemplateFromCSR: istiod's
//     CA signs with NotBefore = now - ClockSkewGracePeriod (2 minutes) and
//     NotAfter = now + TTL, so NotBefore is not when the certificate was
//     issued, and NotAfter-NotBefore is its lifetime plus 2 minutes.
//   - security/pkg/nodeagent/cache/secretcache.go, rotateTime: pilot-agent
//     rotates at ExpireTime - (ratio+jitter)*(ExpireTime-CreatedTime), where
//     CreatedTime is when it got the certificate, ratio is
//     SECRET_GRACE_PERIOD_RATIO (0.5) and jitter is uniform within
//     +-SECRET_GRACE_PERIOD_RATIO_JITTER (0.01; pilot/cmd/pilot-agent/options/options.go).
//
// So a certificate issued at t with lifetime L is rotated by t + 0.51*L at
// the latest. Renewal is overdue once that time and a margin for retries
// (overdueMargin of the lifetime, at least minOverdueMargin for one
// certificate request) have passed: at 24 hours that is 75 % of the
// lifetime, as before; at 1 minute, 45.6 s after issuance, where going by
// NotBefore called it overdue 15 s after issuance, before pilot-agent
// rotates at 30 s.
const (
	istioBackdate    = 2 * time.Minute // ClockSkewGracePeriod
	renewalRatio     = 0.5             // 1 - SECRET_GRACE_PERIOD_RATIO
	renewalJitter    = 0.01            // SECRET_GRACE_PERIOD_RATIO_JITTER
	overdueMargin    = 0.24
	minOverdueMargin = 15 * time.Second
)

// renewBy is when pilot-agent should have replaced c, margin included.
func renewBy(c *Certificate) time.Time {
	issued := c.NotBefore
	if c.NotAfter.Sub(c.NotBefore) > istioBackdate {
		// Istio's CA: every certificate it signs is valid 2 minutes before it
		// was issued. A CA that does not back-date makes this later, so
		// renewal is called overdue later, never too early.
		issued = c.NotBefore.Add(istioBackdate)
	}
	life := c.NotAfter.Sub(issued)
	rotated := issued.Add(time.Duration(float64(life) * (renewalRatio + renewalJitter)))
	margin := max(time.Duration(float64(life)*overdueMargin), minOverdueMargin)
	return rotated.Add(margin)
}

// Judge returns the verdict for f.
func Judge(f Facts) Verdict {
	onboard := reason.Because(reason.CredentialsReissue, f.VM)
	var v Verdict
	var certValid, tokenValid bool
	if c := f.Cert; c != nil {
		certValid = f.Now.Before(c.NotAfter)
		v.RenewBy = renewBy(c)
	}
	if t := f.Token; t != nil {
		tokenValid = f.Now.Before(t.ExpiresAt)
	}
	revoked := f.Token != nil && f.Token.BoundSecret != "" && f.Binding.Checked && f.Binding.UID != f.Token.BoundUID
	secret := f.Namespace + "/" + f.Token.secretName()

	switch {
	case f.Cert == nil && f.Token == nil:
		v.State, v.Fail = Missing, true
		v.Detail = "no workload certificate and no istio-token on the VM"
		v.Cause = onboard
	case revoked:
		v.State, v.Fail = Revoked, true
		what := "was deleted"
		if f.Binding.UID != "" {
			what = "was replaced (another UID)"
		}
		v.Detail = fmt.Sprintf("revoked: the Secret %s the token is bound to %s, so istiod refuses the token", secret, what)
		if certValid {
			v.Detail += fmt.Sprintf("; the certificate stays valid until %s and will not be renewed", stamp(f.Cert.NotAfter))
		}
		v.Cause = reason.Because(reason.CredentialsRevoked, f.VM)
	case !certValid && !tokenValid:
		v.State, v.Fail = Stranded, true
		v.Detail = "no valid credential: " + certWords(f.Cert) + " and " + tokenWords(f.Token) + ": the VM cannot rejoin the mesh on its own"
		v.Cause = onboard
	case !tokenValid:
		v.State, v.Fail = TokenExpired, true
		v.Detail = fmt.Sprintf("%s: pilot-agent cannot renew the certificate, which expires at %s", tokenWords(f.Token), stamp(f.Cert.NotAfter))
		v.Cause = onboard
	case f.Cert == nil:
		v.State = NoCertificate
		v.Detail = fmt.Sprintf("no workload certificate yet; the token is valid until %s, so pilot-agent can ask for one", stamp(f.Token.ExpiresAt))
		v.Cause = reason.Because(reason.CredentialsRenewing, f.VM)
	case !certValid:
		v.State = CertExpired
		v.Detail = fmt.Sprintf("the certificate expired at %s; the token is valid until %s, so pilot-agent gets a new one when it reaches istiod", stamp(f.Cert.NotAfter), stamp(f.Token.ExpiresAt))
		v.Cause = reason.Because(reason.CredentialsRenewing, f.VM)
	case f.Now.After(v.RenewBy):
		v.State = RenewalOverdue
		v.Detail = fmt.Sprintf("the certificate (valid until %s) should have been renewed by %s: pilot-agent is not reaching istiod", stamp(f.Cert.NotAfter), stamp(v.RenewBy))
		v.Cause = reason.Because(reason.CredentialsOverdue, f.VM)
	case pastHalf(f.Token, f.Now):
		v.State = Rotate
		v.Detail = fmt.Sprintf("the token is past half its life (it expires at %s)", stamp(f.Token.ExpiresAt))
		v.Cause = reason.Because(reason.CredentialsTokenAging, f.VM)
	default:
		v.State = OK
		v.Detail = fmt.Sprintf("certificate valid until %s; token valid until %s", stamp(f.Cert.NotAfter), stamp(f.Token.ExpiresAt))
	}
	return v
}

func (t *Token) secretName() string {
	if t == nil {
		return ""
	}
	return t.BoundSecret
}

func pastHalf(t *Token, now time.Time) bool {
	if t.IssuedAt.IsZero() {
		return false
	}
	return now.After(t.IssuedAt.Add(t.ExpiresAt.Sub(t.IssuedAt) / 2))
}

func certWords(c *Certificate) string {
	if c == nil {
		return "no workload certificate"
	}
	return "the certificate expired at " + stamp(c.NotAfter)
}

func tokenWords(t *Token) string {
	if t == nil {
		return "no istio-token"
	}
	return "the token expired at " + stamp(t.ExpiresAt)
}

// stamp is a time as the JSON carries it, RFC 3339 in UTC.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
