// Package credinfo reads what the sidecar's credentials say, for status
// reports: the workload certificate pilot-agent writes and the istio-token
// it presents to istiod. Nothing here verifies a signature; these are facts
// to show an operator, not trust decisions.
package credinfo

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// MaxFile bounds what is read of a credential file. Both live where
// istio-proxy writes (/etc/certs, /var/run/secrets) and hold a few KiB; the
// agent reading them is root, so they are opened as fsroot does (no
// symlinks, regular files only: a FIFO or device is refused, never waited on).
const MaxFile = 1 << 20

// Certificate describes the leaf of a PEM certificate chain.
type Certificate struct {
	Subject   string
	URISANs   []string // the SPIFFE identity, spiffe://<trust domain>/ns/<ns>/sa/<sa>
	NotBefore time.Time
	NotAfter  time.Time
}

// ReadCertificate reads a PEM chain such as cert-chain.pem below root, leaf
// first as pilot-agent writes it, and describes the leaf. A missing file
// gives an error wrapping fs.ErrNotExist.
func ReadCertificate(root *fsroot.Root, path string) (Certificate, error) {
	data, err := root.ReadLimited(path, MaxFile)
	if err != nil {
		return Certificate{}, fmt.Errorf("read certificate: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return Certificate{}, fmt.Errorf("certificate %s is empty: the sidecar writes it once istiod has signed one; check the istio service's logs", path)
	}
	var others []string
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			others = append(others, b.Type)
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return Certificate{}, fmt.Errorf("parse first certificate in %s: %w; replace the file with a valid PEM chain", path, err)
		}
		c := Certificate{
			Subject:   cert.Subject.String(),
			NotBefore: cert.NotBefore,
			NotAfter:  cert.NotAfter,
		}
		for _, u := range cert.URIs {
			c.URISANs = append(c.URISANs, u.String())
		}
		return c, nil
	}
	if len(others) > 0 {
		return Certificate{}, fmt.Errorf("%s holds no CERTIFICATE block (found %s): point at the certificate chain, e.g. cert-chain.pem", path, strings.Join(others, ", "))
	}
	return Certificate{}, fmt.Errorf("%s is not PEM: want a -----BEGIN CERTIFICATE----- block, as in cert-chain.pem", path)
}

// Token holds the claims of a JWT such as the istio-token, a Kubernetes
// service-account token.
type Token struct {
	Subject   string // system:serviceaccount:<namespace>:<name>
	Audiences []string
	Issuer    string
	IssuedAt  time.Time // zero if the token has no iat
	ExpiresAt time.Time // zero if the token has no exp
	// BoundSecret is the Secret a bound token dies with ("" for none):
	// deleting that Secret revokes the token.
	BoundSecret BoundObject
}

// BoundObject names the object a bound service-account token is tied to.
type BoundObject struct {
	Name, UID string
}

// ReadToken reads a JWT from path below root and decodes its claims without
// verifying the signature. Errors never quote the token: it is a credential.
func ReadToken(root *fsroot.Root, path string) (Token, error) {
	data, err := root.ReadLimited(path, MaxFile)
	if err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	tok, err := parseToken(string(data))
	if err != nil {
		return Token{}, fmt.Errorf("token %s: %w", path, err)
	}
	return tok, nil
}

// FreshTokenFix ends the error of a token that does not decode: only
// another token mends it (the program that reports the error names its own
// command for that).
const FreshTokenFix = "write a fresh token"

// ParseToken decodes the claims of a JWT held in memory, unverified.
func ParseToken(raw []byte) (Token, error) { return parseToken(string(raw)) }

// parseToken decodes the claims of a compact JWT; surrounding whitespace is
// ignored.
func parseToken(raw string) (Token, error) {
	const fix = FreshTokenFix
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return Token{}, fmt.Errorf("token is empty: %s", fix)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return Token{}, fmt.Errorf("token has %d dot-separated parts, want 3 (header.payload.signature): %s", len(parts), fix)
	}
	var header struct {
		Alg string `json:"alg"`
	}
	if err := decodePart(parts[0], &header); err != nil {
		return Token{}, fmt.Errorf("token header: %w: %s", err, fix)
	}
	var claims struct {
		Sub string          `json:"sub"`
		Iss string          `json:"iss"`
		Aud json.RawMessage `json:"aud"`
		Exp *numericDate    `json:"exp"`
		Iat *numericDate    `json:"iat"`
		K8s struct {
			Secret *struct {
				Name string `json:"name"`
				UID  string `json:"uid"`
			} `json:"secret"`
		} `json:"kubernetes.io"`
	}
	if err := decodePart(parts[1], &claims); err != nil {
		return Token{}, fmt.Errorf("token payload: %w: %s", err, fix)
	}
	aud, err := audiences(claims.Aud)
	if err != nil {
		return Token{}, fmt.Errorf("token payload: %w: %s", err, fix)
	}
	tok := Token{
		Subject:   claims.Sub,
		Audiences: aud,
		Issuer:    claims.Iss,
		IssuedAt:  claims.Iat.time(),
		ExpiresAt: claims.Exp.time(),
	}
	if sec := claims.K8s.Secret; sec != nil {
		tok.BoundSecret = BoundObject{Name: sec.Name, UID: sec.UID}
	}
	return tok, nil
}

// decodePart decodes one base64url JSON part. JSON syntax errors are not
// wrapped: their text quotes the payload.
func decodePart(part string, v any) error {
	// RFC 7515 drops the padding; accept it anyway, some encoders keep it.
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(part, "="))
	if err != nil {
		return fmt.Errorf("not base64url: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return fmt.Errorf("claim %q is a JSON %s, want a %s", typeErr.Field, typeErr.Value, typeErr.Type)
		}
		var dateErr *dateError
		if errors.As(err, &dateErr) {
			return dateErr
		}
		return errors.New("not a JSON object")
	}
	return nil
}

// audiences reads aud, which RFC 7519 allows as one string or an array.
func audiences(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err == nil {
		return many, nil
	}
	return nil, errors.New(`claim "aud" is neither a string nor an array of strings`)
}

// numericDate is a JWT time: seconds since the epoch, possibly fractional.
type numericDate struct{ t time.Time }

type dateError struct{}

func (dateError) Error() string { return "a time claim (exp, iat) is not a number of seconds" }

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil || math.IsInf(f, 0) || math.Abs(f) > 1<<53 {
		return &dateError{}
	}
	sec, frac := math.Modf(f)
	d.t = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return nil
}

func (d *numericDate) time() time.Time {
	if d == nil {
		return time.Time{}
	}
	return d.t
}
