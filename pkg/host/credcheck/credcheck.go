// Package credcheck judges a VM's mesh credentials as one: the workload
// certificate pilot-agent holds and the istio-token it asks istiod with. The
// sidecar authenticates every certificate request with the token alone
// (PROV_CERT is empty), so a valid token lets a VM that was off for any
// time rejoin, and a revoked or lapsed one stops renewal. The verdict names
// the cause in words, with RFC 3339 times, and the command that fixes it.
package credcheck

import (
	"fmt"
	"time"
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
	// a warning (Fail false, Fix set) is worth acting on, not urgent.
	Fail   bool
	Detail string
	Fix    string
	// RenewBy is when pilot-agent should have renewed the certificate
	// (zero without one).
	RenewBy time.Time
}

// renewalRatio is where in its life pilot-agent renews a certificate
// (SECRET_GRACE_PERIOD_RATIO, 0.5); overdueRatio leaves room for its
// retries and jitter before a late renewal is called overdue.
const (
	renewalRatio = 0.5
	overdueRatio = 0.75
)

// Judge returns the verdict for f.
func Judge(f Facts) Verdict {
	onboard := "run hostctl vm onboard " + f.VM + " (a new token bound to a new Secret; no restart)"
	var v Verdict
	var certValid, tokenValid bool
	if c := f.Cert; c != nil {
		certValid = f.Now.Before(c.NotAfter)
		life := c.NotAfter.Sub(c.NotBefore)
		v.RenewBy = c.NotBefore.Add(time.Duration(float64(life) * overdueRatio))
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
		v.Fix = onboard
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
		v.Fix = "if that was not meant, " + onboard + "; else hostctl vm rm " + f.VM
	case !certValid && !tokenValid:
		v.State, v.Fail = Stranded, true
		v.Detail = "no valid credential: " + certWords(f.Cert) + " and " + tokenWords(f.Token) + ": the VM cannot rejoin the mesh on its own"
		v.Fix = onboard
	case !tokenValid:
		v.State, v.Fail = TokenExpired, true
		v.Detail = fmt.Sprintf("%s: pilot-agent cannot renew the certificate, which expires at %s", tokenWords(f.Token), stamp(f.Cert.NotAfter))
		v.Fix = onboard
	case f.Cert == nil:
		v.State = NoCertificate
		v.Detail = fmt.Sprintf("no workload certificate yet; the token is valid until %s, so pilot-agent can ask for one", stamp(f.Token.ExpiresAt))
		v.Fix = "if it stays so, see hostctl vm logs " + f.VM
	case !certValid:
		v.State = CertExpired
		v.Detail = fmt.Sprintf("the certificate expired at %s; the token is valid until %s, so pilot-agent gets a new one when it reaches istiod", stamp(f.Cert.NotAfter), stamp(f.Token.ExpiresAt))
		v.Fix = "if it stays so, see hostctl vm logs " + f.VM
	case f.Now.After(v.RenewBy):
		v.State = RenewalOverdue
		v.Detail = fmt.Sprintf("the certificate (valid until %s) should have been renewed by %s: pilot-agent is not reaching istiod", stamp(f.Cert.NotAfter), stamp(v.RenewBy))
		v.Fix = "see hostctl vm logs " + f.VM + " and hostctl doctor"
	case pastHalf(f.Token, f.Now):
		v.State = Rotate
		v.Detail = fmt.Sprintf("the token is past half its life (it expires at %s)", stamp(f.Token.ExpiresAt))
		v.Fix = "run hostctl vm renew " + f.VM + " (or hostctl up): it replaces the token, no restart"
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
