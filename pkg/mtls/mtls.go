// Package mtls is the agent's small PKI: a CA that hostctl keeps on the
// workstation, the server certificate vmagent presents, the client
// certificate hostctl presents, and the TLS 1.3 configurations that pin each
// side to that one CA. Keys are ECDSA P-256; only the standard library is used.
package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// ClockSkew is how far before "now" new certificates become valid, so a VM
// whose clock runs a little behind the workstation's still accepts them.
const ClockSkew = 5 * time.Minute

// CA signs the agent's server and client certificates.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
}

// NewCA creates a self-signed CA valid from ClockSkew ago for validity.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("new CA: common name is empty: name the CA, e.g. \"meshvm agent CA\"")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("new CA %q: validity %v is not positive: pass how long the CA should last", commonName, validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: generate key: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", commonName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaves only, never another CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: create certificate: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse certificate: %w", commonName, err)
	}
	return &CA{cert: cert, certPEM: encodePEM("CERTIFICATE", der), key: key}, nil
}

// LoadCA reads a CA saved with CertPEM and KeyPEM. The key may be PKCS#8
// ("PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY") and must match the certificate.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := parseCerts("CA certificate", certPEM)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("CA certificate: found %d certificates, want exactly 1: keep only the CA's own certificate in the file", len(certs))
	}
	cert := certs[0]
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA certificate %q is not a CA (no certificate-signing usage): point at the CA certificate, not a server or client certificate", cert.Subject.CommonName)
	}
	key, err := parseKey("CA private key", keyPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("CA private key does not match CA certificate %q: load the key saved with that certificate", cert.Subject.CommonName)
	}
	return &CA{cert: cert, certPEM: encodePEM("CERTIFICATE", cert.Raw), key: key}, nil
}

// CertPEM returns the CA certificate, which both sides pin.
func (ca *CA) CertPEM() []byte {
	return append([]byte(nil), ca.certPEM...)
}

// KeyPEM returns the CA private key as PKCS#8 PEM. Store it with mode 0600.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA private key: %w", err)
	}
	return encodePEM("PRIVATE KEY", der), nil
}

// IssueOptions describes a certificate for Issue.
type IssueOptions struct {
	CommonName string
	// Organization becomes the subject's O (Kubernetes reads it as groups).
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	// Client makes a client certificate (ExtKeyUsageClientAuth); otherwise
	// the certificate is for a server (ExtKeyUsageServerAuth).
	Client bool
	// NotBefore defaults to ClockSkew ago. NotAfter is required and is cut
	// to the CA's own expiry, since a chain is no good past it.
	NotBefore, NotAfter time.Time
}

// IssueServer issues a server certificate for the given names, valid from
// ClockSkew ago until validity from now.
func (ca *CA) IssueServer(commonName string, dnsNames []string, ips []net.IP, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("issue server certificate %q: validity %v is not positive: pass how long it should last", commonName, validity)
	}
	return ca.Issue(IssueOptions{CommonName: commonName, DNSNames: dnsNames, IPs: ips, NotAfter: time.Now().Add(validity)})
}

// IssueClient issues a client certificate, valid from ClockSkew ago until
// validity from now. Its common name is the identity PeerIdentity reports.
func (ca *CA) IssueClient(commonName string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("issue client certificate %q: validity %v is not positive: pass how long it should last", commonName, validity)
	}
	return ca.Issue(IssueOptions{CommonName: commonName, Client: true, NotAfter: time.Now().Add(validity)})
}

// Issue issues a certificate with a fresh P-256 key and a random 128-bit
// serial, and returns both as PEM (the key as PKCS#8).
func (ca *CA) Issue(o IssueOptions) (certPEM, keyPEM []byte, err error) {
	kind := "server"
	usage := x509.ExtKeyUsageServerAuth
	if o.Client {
		kind, usage = "client", x509.ExtKeyUsageClientAuth
	}
	if o.CommonName == "" {
		return nil, nil, fmt.Errorf("issue %s certificate: common name is empty: name the %s it identifies", kind, kind)
	}
	fail := func(format string, args ...any) ([]byte, []byte, error) {
		return nil, nil, fmt.Errorf("issue %s certificate %q: "+format, append([]any{kind, o.CommonName}, args...)...)
	}
	if o.NotAfter.IsZero() {
		return fail("NotAfter is not set: say when it expires")
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-ClockSkew)
	}
	if o.NotAfter.After(ca.cert.NotAfter) {
		o.NotAfter = ca.cert.NotAfter
	}
	if !o.NotAfter.After(o.NotBefore) {
		return fail("NotAfter %s is not after NotBefore %s", o.NotAfter.Format(time.RFC3339), o.NotBefore.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return fail("%w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CommonName, Organization: o.Organization},
		DNSNames:              o.DNSNames,
		IPAddresses:           o.IPs,
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return fail("sign: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fail("marshal key: %w", err)
	}
	return encodePEM("CERTIFICATE", der), encodePEM("PRIVATE KEY", keyDER), nil
}

// ServerConfig is vmagent's listener configuration: TLS 1.3 only, and every
// client must present a certificate issued by the pinned clientCAPEM.
func ServerConfig(certPEM, keyPEM, clientCAPEM []byte) (*tls.Config, error) {
	pair, err := keyPair("agent", certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	pool, err := caPool("client CA", clientCAPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// ClientConfig is hostctl's configuration for dialling an agent: TLS 1.3
// only, trusting only the pinned serverCAPEM, and checking that the agent's
// certificate is valid for serverName (a DNS name or an IP address).
func ClientConfig(certPEM, keyPEM, serverCAPEM []byte, serverName string) (*tls.Config, error) {
	if serverName == "" {
		return nil, errors.New("server name is empty: pass the agent's address or DNS name as its certificate names it")
	}
	pair, err := keyPair("client", certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	pool, err := caPool("agent CA", serverCAPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

// PeerIdentity returns the common name of the peer's verified certificate:
// on a server, the client's identity; on a client, the server's. It fails
// unless the handshake completed and verified a chain to the pinned CA.
func PeerIdentity(state tls.ConnectionState) (string, error) {
	if !state.HandshakeComplete {
		return "", errors.New("peer identity: TLS handshake has not completed")
	}
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return "", errors.New("peer identity: no verified certificate chain: the listener must require and verify client certificates (use mtls.ServerConfig)")
	}
	cn := state.VerifiedChains[0][0].Subject.CommonName
	if cn == "" {
		return "", errors.New("peer identity: verified certificate has no common name: reissue it with a name")
	}
	return cn, nil
}

func keyPair(who string, certPEM, keyPEM []byte) (tls.Certificate, error) {
	if _, err := parseCerts(who+" certificate", certPEM); err != nil {
		return tls.Certificate{}, err
	}
	if _, err := parseKey(who+" private key", keyPEM); err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s certificate and private key: %w: install the key issued with that certificate", who, err)
	}
	return pair, nil
}

// caPool trusts every CA certificate in data and nothing else: no system roots.
func caPool(what string, data []byte) (*x509.CertPool, error) {
	certs, err := parseCerts(what, data)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("%s: certificate %q is not a CA: install the CA certificate that issued it instead", what, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

// parseCerts decodes one or more CERTIFICATE blocks and nothing else.
func parseCerts(what string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: found a %q PEM block, want only CERTIFICATE blocks: is this the key file?", what, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: parse certificate %d: %w: replace the file with a valid certificate", what, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, notPEM(what, "CERTIFICATE", data)
	}
	return certs, nil
}

// parseKey decodes a single PKCS#8 or SEC 1 private key.
func parseKey(what string, data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, notPEM(what, "PRIVATE KEY", data)
	}
	var (
		key any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%s: found a %q PEM block, want PRIVATE KEY or EC PRIVATE KEY: is this the certificate file?", what, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: parse %s: %w: replace the file with a valid key", what, b.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: a %T cannot sign: use an ECDSA key", what, key)
	}
	return signer, nil
}

func notPEM(what, want string, data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("%s is empty: want a PEM \"-----BEGIN %s-----\" block; check the file was written", what, want)
	}
	head := data
	if len(head) > 16 {
		head = head[:16]
	}
	return fmt.Errorf("%s is not PEM (starts %q): want a \"-----BEGIN %s-----\" block; convert it or reissue it", what, head, want)
}

// newSerial returns a random positive serial of up to 128 bits.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encodePEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
