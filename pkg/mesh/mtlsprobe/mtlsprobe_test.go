package mtlsprobe

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// issue makes a CA and a workload certificate for uri under it.
func issue(t *testing.T, uri string) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return roots, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serve runs a gRPC server with the health service on loopback.
func serve(t *testing.T, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func TestProbeTellsStrictFromTheRest(t *testing.T) {
	const id = "/ns/vmns/sa/grpc-server"
	roots, cert := issue(t, "spiffe://cluster.local"+id)
	otherRoots, _ := issue(t, "spiffe://cluster.local/ns/x/sa/y")
	strict := serve(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})))
	permissive := serve(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	plain := serve(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, addr string
		pool       *x509.CertPool
		identity   string
		want       string // "" for enforced
	}{
		{"strict", strict, roots, id, ""},
		{"client without a certificate taken", permissive, roots, id, "without a certificate"},
		{"plaintext", plain, roots, id, "serves plaintext"},
		{"another identity", strict, roots, "/ns/vmns/sa/other", "not the workload's identity"},
		{"another root", strict, otherRoots, id, "does not chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Probe(ctx, tc.addr, tc.pool, 2*time.Second).Enforced(tc.identity)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want enforced", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
