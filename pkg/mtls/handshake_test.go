package mtls_test

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/mtls"
)

// pki is one test's CA with a good agent (server) and hostctl (client) pair.
type pki struct {
	ca                   *mtls.CA
	srvCert, srvKey      []byte
	cliCert, cliKey      []byte
	serverCfg, clientCfg *tls.Config
}

func newPKI(t *testing.T) pki {
	t.Helper()
	ca, err := mtls.NewCA("test agent CA", time.Hour)
	must(t, err)
	p := pki{ca: ca}
	p.srvCert, p.srvKey, err = ca.IssueServer("vmagent", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	must(t, err)
	p.cliCert, p.cliKey, err = ca.IssueClient("hostctl", time.Hour)
	must(t, err)
	p.serverCfg, err = mtls.ServerConfig(p.srvCert, p.srvKey, ca.CertPEM())
	must(t, err)
	p.clientCfg, err = mtls.ClientConfig(p.cliCert, p.cliKey, ca.CertPEM(), "localhost")
	must(t, err)
	return p
}

// outcome is what each end of one connection saw.
type outcome struct {
	serverErr, clientErr error
	serverSaw, clientSaw string // PeerIdentity on each side
	clientRead           string // what the server wrote after its handshake
}

// connect runs one real TLS handshake over loopback TCP. On success the
// server writes "hello" and closes, so a client whose certificate the server
// refused (which TLS 1.3 reports only after the client's handshake) fails
// when it reads.
func connect(t *testing.T, serverCfg, clientCfg *tls.Config) outcome {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer ln.Close()

	type result struct {
		saw string
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		// A guard against a hung test, not an assertion: handshakes here
		// take milliseconds.
		c.SetDeadline(time.Now().Add(time.Minute))
		tc := tls.Server(c, serverCfg)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		saw, err := mtls.PeerIdentity(tc.ConnectionState())
		if err == nil {
			_, err = tc.Write([]byte("hello"))
		}
		done <- result{saw: saw, err: err}
	}()

	var o outcome
	d := &net.Dialer{Deadline: time.Now().Add(time.Minute)}
	tc, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), clientCfg)
	if err != nil {
		o.clientErr = err
	} else {
		tc.SetDeadline(time.Now().Add(time.Minute))
		o.clientSaw, o.clientErr = mtls.PeerIdentity(tc.ConnectionState())
		if o.clientErr == nil {
			var b []byte
			b, o.clientErr = io.ReadAll(tc)
			o.clientRead = string(b)
		}
		tc.Close()
	}
	r := <-done
	o.serverSaw, o.serverErr = r.saw, r.err
	return o
}

func TestHandshake(t *testing.T) {
	p := newPKI(t)
	ca := p.ca

	other, err := mtls.NewCA("someone else's CA", time.Hour)
	must(t, err)
	otherCert, otherKey, err := other.IssueClient("intruder", time.Hour)
	must(t, err)
	otherSrvCert, otherSrvKey, err := other.IssueServer("impostor", []string{"localhost"}, nil, time.Hour)
	must(t, err)
	now := time.Now()
	expiredCliCert, expiredCliKey, err := ca.Issue(mtls.IssueOptions{CommonName: "late client", Client: true,
		NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	must(t, err)
	expiredSrvCert, expiredSrvKey, err := ca.Issue(mtls.IssueOptions{CommonName: "late agent",
		DNSNames: []string{"localhost"}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	must(t, err)
	elsewhereCert, elsewhereKey, err := ca.IssueServer("vmagent", []string{"vm2.example"}, []net.IP{net.ParseIP("10.0.0.8")}, time.Hour)
	must(t, err)

	clientCfg := func(cert, key []byte) *tls.Config {
		cfg, err := mtls.ClientConfig(cert, key, ca.CertPEM(), "localhost")
		must(t, err)
		return cfg
	}
	serverCfg := func(cert, key []byte) *tls.Config {
		cfg, err := mtls.ServerConfig(cert, key, ca.CertPEM())
		must(t, err)
		return cfg
	}
	// A real client offers only certificates from the CAs the server names;
	// an intruder offers its own regardless.
	pushy := func(cert, key []byte) *tls.Config {
		cfg := clientCfg(cert, key)
		pair := cfg.Certificates[0]
		cfg.Certificates = nil
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		return cfg
	}
	// A client certificate that names localhost, to show usage is checked too.
	cliAsSrvCert, cliAsSrvKey, err := ca.Issue(mtls.IssueOptions{CommonName: "hostctl", Client: true,
		DNSNames: []string{"localhost"}, NotAfter: now.Add(time.Hour)})
	must(t, err)
	noClientCert := p.clientCfg.Clone()
	noClientCert.Certificates = nil
	tls12 := p.clientCfg.Clone()
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	byIP, err := mtls.ClientConfig(p.cliCert, p.cliKey, ca.CertPEM(), "127.0.0.1")
	must(t, err)

	tests := []struct {
		name      string
		server    *tls.Config
		client    *tls.Config
		refusedBy string // "server", "client" or "" for accepted
		wantErr   string // part of the refusing side's error
	}{
		{name: "good client certificate", server: p.serverCfg, client: p.clientCfg},
		{name: "server name is an IP address", server: p.serverCfg, client: byIP},
		{name: "no client certificate", server: p.serverCfg, client: noClientCert,
			refusedBy: "server", wantErr: "didn't provide a certificate"},
		{name: "client certificate from another CA", server: p.serverCfg, client: pushy(otherCert, otherKey),
			refusedBy: "server", wantErr: "unknown authority"},
		{name: "client offering no certificate from the pinned CA", server: p.serverCfg, client: clientCfg(otherCert, otherKey),
			refusedBy: "server", wantErr: "didn't provide a certificate"},
		{name: "expired client certificate", server: p.serverCfg, client: clientCfg(expiredCliCert, expiredCliKey),
			refusedBy: "server", wantErr: "expired"},
		{name: "server certificate used as a client certificate", server: p.serverCfg, client: clientCfg(p.srvCert, p.srvKey),
			refusedBy: "server", wantErr: "incompatible key usage"},
		{name: "server certificate for a different name", server: serverCfg(elsewhereCert, elsewhereKey), client: p.clientCfg,
			refusedBy: "client", wantErr: "not localhost"},
		{name: "expired server certificate", server: serverCfg(expiredSrvCert, expiredSrvKey), client: p.clientCfg,
			refusedBy: "client", wantErr: "expired"},
		{name: "client certificate used as a server certificate", server: serverCfg(cliAsSrvCert, cliAsSrvKey), client: p.clientCfg,
			refusedBy: "client", wantErr: "incompatible key usage"},
		{name: "server certificate from another CA", server: serverCfg(otherSrvCert, otherSrvKey), client: p.clientCfg,
			refusedBy: "client", wantErr: "unknown authority"},
		{name: "TLS 1.2 only client", server: p.serverCfg, client: tls12,
			refusedBy: "server", wantErr: "unsupported versions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := connect(t, tt.server, tt.client)
			switch tt.refusedBy {
			case "":
				if o.serverErr != nil || o.clientErr != nil {
					t.Fatalf("got server error %v, client error %v, want both sides to connect", o.serverErr, o.clientErr)
				}
				if o.serverSaw != "hostctl" {
					t.Errorf("server saw peer %q, want %q", o.serverSaw, "hostctl")
				}
				if o.clientSaw != "vmagent" {
					t.Errorf("client saw peer %q, want %q", o.clientSaw, "vmagent")
				}
				if o.clientRead != "hello" {
					t.Errorf("client read %q, want %q", o.clientRead, "hello")
				}
			default:
				refuser, other := o.serverErr, o.clientErr
				if tt.refusedBy == "client" {
					refuser, other = o.clientErr, o.serverErr
				}
				if refuser == nil || !strings.Contains(refuser.Error(), tt.wantErr) {
					t.Errorf("%s error: got %v, want one containing %q", tt.refusedBy, refuser, tt.wantErr)
				}
				if other == nil {
					t.Errorf("other side: got a working connection, want it to fail too")
				}
				if o.clientRead != "" {
					t.Errorf("client read %q, want nothing", o.clientRead)
				}
			}
		})
	}
}

func TestConfigsAreTLS13AndPinned(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name string
		cfg  *tls.Config
	}{
		{"server", p.serverCfg},
		{"client", p.clientCfg},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg.MinVersion != tls.VersionTLS13 {
				t.Errorf("MinVersion: got %#x, want %#x (TLS 1.3)", tt.cfg.MinVersion, tls.VersionTLS13)
			}
			if len(tt.cfg.Certificates) != 1 {
				t.Errorf("Certificates: got %d, want 1", len(tt.cfg.Certificates))
			}
		})
	}
	if got, want := p.serverCfg.ClientAuth, tls.RequireAndVerifyClientCert; got != want {
		t.Errorf("server ClientAuth: got %v, want %v", got, want)
	}
	if p.serverCfg.ClientCAs == nil {
		t.Error("server ClientCAs: got nil (any system root), want the pinned CA")
	}
	if p.clientCfg.RootCAs == nil {
		t.Error("client RootCAs: got nil (system roots), want the pinned CA")
	}
	if got, want := p.clientCfg.ServerName, "localhost"; got != want {
		t.Errorf("client ServerName: got %q, want %q", got, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
