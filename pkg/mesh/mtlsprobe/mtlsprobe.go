// Package mtlsprobe checks, from outside the mesh, that a workload's port
// takes mesh clients only: a plaintext gRPC call and a TLS client without
// a certificate must be refused, and the certificate the port presents must
// be the workload's SPIFFE identity, issued under the mesh's root. It is how
// a proxyless gRPC server's mTLS is shown rather than assumed: grpc-go falls
// back to plaintext silently where xDS sends no security configuration.
package mtlsprobe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Result is what the port did with each client.
type Result struct {
	// Plaintext is the plaintext gRPC call's error: nil means it was served.
	Plaintext error
	// NoCert is the refusal of a TLS client without a certificate: nil
	// means the port took it.
	NoCert error
	// Handshake is a TLS handshake that failed before any certificate was
	// seen (nothing speaks TLS there, or TLS 1.2 refusing at once).
	Handshake error
	// URIs are the URI SANs of the port's certificate.
	URIs []string
	// Chain is the certificate's verification against the mesh's root.
	Chain error
}

// Probe tries addr with each client, each bounded by timeout.
func Probe(ctx context.Context, addr string, roots *x509.CertPool, timeout time.Duration) Result {
	var r Result
	r.Plaintext = plaintext(ctx, addr, timeout)
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout},
		// Verified below by SPIFFE rules: the certificate names no host.
		Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		r.Handshake, r.NoCert = err, err
		return r
	}
	defer conn.Close()
	tc := conn.(*tls.Conn)
	st := tc.ConnectionState()
	leaf := st.PeerCertificates[0]
	for _, u := range leaf.URIs {
		r.URIs = append(r.URIs, u.String())
	}
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, r.Chain = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	// TLS 1.3 finishes the client's handshake before the server judges the
	// client: its refusal comes on the first read.
	tc.SetDeadline(time.Now().Add(timeout))
	if _, err := tc.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		r.NoCert = err
		return r
	}
	_, err = tc.Read(make([]byte, 64))
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		r.NoCert = err
	}
	return r
}

// plaintext makes one plaintext gRPC call (the health service: any answer,
// even Unimplemented, means the port served plaintext).
func plaintext(ctx context.Context, addr string, timeout time.Duration) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil && strings.Contains(err.Error(), "Unimplemented") {
		return nil
	}
	return err
}

// Enforced says whether the port takes mesh clients only and is the
// workload identity (a URI ending in /ns/NS/sa/SA); the error names what
// is not so.
func (r Result) Enforced(identity string) error {
	switch {
	case r.Plaintext == nil:
		return errors.New("it serves plaintext: apply PeerAuthentication mode STRICT to the workload")
	case r.Handshake != nil:
		return fmt.Errorf("no TLS on the port (%v): is the app serving there, with xDS server credentials?", r.Handshake)
	case r.NoCert == nil:
		return errors.New("it takes TLS clients without a certificate: apply PeerAuthentication mode STRICT to the workload")
	case !slices.ContainsFunc(r.URIs, func(u string) bool { return strings.HasPrefix(u, "spiffe://") && strings.HasSuffix(u, identity) }):
		return fmt.Errorf("its certificate is %v, not the workload's identity .../%s", r.URIs, strings.TrimPrefix(identity, "/"))
	case r.Chain != nil:
		return fmt.Errorf("its certificate does not chain to the mesh's root: %v", r.Chain)
	}
	return nil
}
