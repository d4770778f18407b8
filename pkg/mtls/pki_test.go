package mtls_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/mtls"
)

func TestLoadCARoundTrip(t *testing.T) {
	ca, err := mtls.NewCA("meshvm agent CA", time.Hour)
	must(t, err)
	keyPEM, err := ca.KeyPEM()
	must(t, err)
	ecKey := toSEC1(t, keyPEM)

	tests := []struct {
		name   string
		keyPEM []byte
	}{
		{"PKCS#8 key", keyPEM},
		{"SEC 1 key", ecKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loaded, err := mtls.LoadCA(ca.CertPEM(), tt.keyPEM)
			must(t, err)
			if got, want := string(loaded.CertPEM()), string(ca.CertPEM()); got != want {
				t.Errorf("CertPEM after load: got %q, want %q", got, want)
			}
			// A certificate the loaded CA issues verifies against the original.
			certPEM, _, err := loaded.IssueClient("hostctl", time.Hour)
			must(t, err)
			leaf := parseCert(t, certPEM)
			roots := x509.NewCertPool()
			roots.AddCert(parseCert(t, ca.CertPEM()))
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("verify a certificate from the loaded CA: got %v, want it to verify", err)
			}
		})
	}
}

func TestLoadCAErrors(t *testing.T) {
	ca, err := mtls.NewCA("meshvm agent CA", time.Hour)
	must(t, err)
	keyPEM, err := ca.KeyPEM()
	must(t, err)
	other, err := mtls.NewCA("another CA", time.Hour)
	must(t, err)
	otherKey, err := other.KeyPEM()
	must(t, err)
	leafCert, leafKey, err := ca.IssueServer("vmagent", []string{"localhost"}, nil, time.Hour)
	must(t, err)

	tests := []struct {
		name      string
		cert, key []byte
		wantErr   string
	}{
		{"empty certificate", nil, keyPEM, "CA certificate is empty"},
		{"certificate not PEM", []byte("MIIB this is DER or base64"), keyPEM, "CA certificate is not PEM"},
		{"key given as certificate", keyPEM, keyPEM, `CA certificate: found a "PRIVATE KEY" PEM block`},
		{"two certificates", append(ca.CertPEM(), other.CertPEM()...), keyPEM, "found 2 certificates, want exactly 1"},
		{"leaf certificate", leafCert, leafKey, `CA certificate "vmagent" is not a CA`},
		{"key not PEM", ca.CertPEM(), []byte("not a key"), "CA private key is not PEM"},
		{"certificate given as key", ca.CertPEM(), ca.CertPEM(), `CA private key: found a "CERTIFICATE" PEM block`},
		{"key of another CA", ca.CertPEM(), otherKey, "CA private key does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mtls.LoadCA(tt.cert, tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigErrorsNameTheInput(t *testing.T) {
	p := newPKI(t)
	otherCert, _, err := p.ca.IssueClient("someone", time.Hour)
	must(t, err)
	garbage := []byte("garbage")

	tests := []struct {
		name    string
		build   func() (*tls.Config, error)
		wantErr string
	}{
		{"server: certificate not PEM", func() (*tls.Config, error) {
			return mtls.ServerConfig(garbage, p.srvKey, p.ca.CertPEM())
		}, "agent certificate is not PEM"},
		{"server: key not PEM", func() (*tls.Config, error) {
			return mtls.ServerConfig(p.srvCert, garbage, p.ca.CertPEM())
		}, "agent private key is not PEM"},
		{"server: key does not match", func() (*tls.Config, error) {
			return mtls.ServerConfig(p.srvCert, p.cliKey, p.ca.CertPEM())
		}, "agent certificate and private key"},
		{"server: client CA not PEM", func() (*tls.Config, error) {
			return mtls.ServerConfig(p.srvCert, p.srvKey, garbage)
		}, "client CA is not PEM"},
		{"server: client CA empty", func() (*tls.Config, error) {
			return mtls.ServerConfig(p.srvCert, p.srvKey, nil)
		}, "client CA is empty"},
		{"server: client CA is a leaf", func() (*tls.Config, error) {
			return mtls.ServerConfig(p.srvCert, p.srvKey, otherCert)
		}, `client CA: certificate "someone" is not a CA`},
		{"client: certificate not PEM", func() (*tls.Config, error) {
			return mtls.ClientConfig(garbage, p.cliKey, p.ca.CertPEM(), "localhost")
		}, "client certificate is not PEM"},
		{"client: key not PEM", func() (*tls.Config, error) {
			return mtls.ClientConfig(p.cliCert, garbage, p.ca.CertPEM(), "localhost")
		}, "client private key is not PEM"},
		{"client: agent CA not PEM", func() (*tls.Config, error) {
			return mtls.ClientConfig(p.cliCert, p.cliKey, garbage, "localhost")
		}, "agent CA is not PEM"},
		{"client: no server name", func() (*tls.Config, error) {
			return mtls.ClientConfig(p.cliCert, p.cliKey, p.ca.CertPEM(), "")
		}, "server name is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.build()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestIssuedCertificates(t *testing.T) {
	ca, err := mtls.NewCA("meshvm agent CA", time.Hour)
	must(t, err)
	caCert := parseCert(t, ca.CertPEM())
	before := time.Now()
	srvPEM, srvKeyPEM, err := ca.IssueServer("vmagent", []string{"vm1.local"}, []net.IP{net.ParseIP("10.0.0.7")}, time.Hour)
	must(t, err)
	cliPEM, _, err := ca.IssueClient("hostctl", 24*time.Hour) // longer than the CA lasts
	must(t, err)
	srv, cli := parseCert(t, srvPEM), parseCert(t, cliPEM)

	tests := []struct {
		name      string
		cert      *x509.Certificate
		wantCA    bool
		wantUsage x509.ExtKeyUsage // leaves only
	}{
		{"server", srv, false, x509.ExtKeyUsageServerAuth},
		{"client", cli, false, x509.ExtKeyUsageClientAuth},
		{"CA", caCert, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cert
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v: got %d bits, want a positive serial of at most 128", c.SerialNumber, c.SerialNumber.BitLen())
			}
			if c.NotBefore.After(before.Add(-mtls.ClockSkew + time.Second)) {
				t.Errorf("NotBefore: got %v, want it backdated by %v from %v", c.NotBefore, mtls.ClockSkew, before)
			}
			pub, ok := c.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() {
				t.Errorf("public key: got %T, want ECDSA P-256", c.PublicKey)
			}
			if c.IsCA != tt.wantCA {
				t.Errorf("IsCA: got %v, want %v", c.IsCA, tt.wantCA)
			}
			if tt.wantCA {
				return
			}
			if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != tt.wantUsage {
				t.Errorf("ExtKeyUsage: got %v, want [%v]", c.ExtKeyUsage, tt.wantUsage)
			}
		})
	}
	if got, want := srv.DNSNames, []string{"vm1.local"}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("server DNSNames: got %v, want %v", got, want)
	}
	if got := srv.IPAddresses; len(got) != 1 || !got[0].Equal(net.ParseIP("10.0.0.7")) {
		t.Errorf("server IPAddresses: got %v, want [10.0.0.7]", got)
	}
	if !cli.NotAfter.Equal(caCert.NotAfter) {
		t.Errorf("client NotAfter: got %v, want it cut to the CA's %v", cli.NotAfter, caCert.NotAfter)
	}
	if srv.SerialNumber.Cmp(cli.SerialNumber) == 0 {
		t.Errorf("serials: got %v twice, want them distinct", srv.SerialNumber)
	}
	if b, _ := pem.Decode(srvKeyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key PEM: got %q, want a PRIVATE KEY block", srvKeyPEM)
	}
}

func TestIssueErrors(t *testing.T) {
	ca, err := mtls.NewCA("meshvm agent CA", time.Hour)
	must(t, err)
	now := time.Now()
	tests := []struct {
		name    string
		issue   func() error
		wantErr string
	}{
		{"no common name", func() error {
			_, _, err := ca.Issue(mtls.IssueOptions{NotAfter: now.Add(time.Hour)})
			return err
		}, "common name is empty"},
		{"no NotAfter", func() error {
			_, _, err := ca.Issue(mtls.IssueOptions{CommonName: "x"})
			return err
		}, "NotAfter is not set"},
		{"NotAfter before NotBefore", func() error {
			_, _, err := ca.Issue(mtls.IssueOptions{CommonName: "x", NotBefore: now, NotAfter: now.Add(-time.Minute)})
			return err
		}, "is not after NotBefore"},
		{"zero server validity", func() error {
			_, _, err := ca.IssueServer("vmagent", nil, nil, 0)
			return err
		}, "validity 0s is not positive"},
		{"negative client validity", func() error {
			_, _, err := ca.IssueClient("hostctl", -time.Hour)
			return err
		}, "validity -1h0m0s is not positive"},
		{"CA without a name", func() error {
			_, err := mtls.NewCA("", time.Hour)
			return err
		}, "common name is empty"},
		{"CA without validity", func() error {
			_, err := mtls.NewCA("ca", 0)
			return err
		}, "is not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.issue()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestPeerIdentityNeedsAVerifiedChain(t *testing.T) {
	tests := []struct {
		name    string
		state   tls.ConnectionState
		wantErr string
	}{
		{"no handshake", tls.ConnectionState{}, "handshake has not completed"},
		{"no verified chain", tls.ConnectionState{HandshakeComplete: true}, "no verified certificate chain"},
		{"no common name", tls.ConnectionState{HandshakeComplete: true, VerifiedChains: [][]*x509.Certificate{{{}}}}, "no common name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := mtls.PeerIdentity(tt.state)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %q, %v, want an error containing %q", id, err, tt.wantErr)
			}
		})
	}
}

// A listener that asks for but does not verify client certificates lets
// anyone in; PeerIdentity still refuses to name such a caller.
func TestPeerIdentityOnUnverifiedListener(t *testing.T) {
	p := newPKI(t)
	lax := p.serverCfg.Clone()
	lax.ClientAuth = tls.RequestClientCert
	other, err := mtls.NewCA("someone else's CA", time.Hour)
	must(t, err)
	cert, key, err := other.IssueClient("intruder", time.Hour)
	must(t, err)
	cfg, err := mtls.ClientConfig(cert, key, p.ca.CertPEM(), "localhost")
	must(t, err)

	o := connect(t, lax, cfg)
	if o.serverErr == nil || !strings.Contains(o.serverErr.Error(), "no verified certificate chain") {
		t.Errorf("server: got identity %q, error %v, want no verified certificate chain", o.serverSaw, o.serverErr)
	}
}

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatalf("not PEM: %q", certPEM)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	must(t, err)
	return c
}

// toSEC1 re-encodes a PKCS#8 ECDSA key as an "EC PRIVATE KEY" block.
func toSEC1(t *testing.T, keyPEM []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(keyPEM)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	must(t, err)
	der, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}
