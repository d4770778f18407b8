// Package storetest holds a vmcore.Store to what the core relies on, so a
// second store (on Secrets and a custom resource's status) is checked by
// the same test as the state directory.
package storetest

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Run checks the stores open makes, each fresh, knowing the VMs named.
func Run(t *testing.T, open func(t *testing.T, vms ...string) vmcore.Store) {
	t.Run("records never written are zero", func(t *testing.T) {
		s := open(t, "vm1")
		if a, err := s.Address("vm1"); a != "" || err != nil {
			t.Errorf("Address: got %q %v, want none", a, err)
		}
		if _, ok, err := s.Joined("vm1"); ok || err != nil {
			t.Errorf("Joined: got ok %v %v, want none", ok, err)
		}
		if tok, err := s.Token("vm1"); len(tok) != 0 || err != nil {
			t.Errorf("Token: got %q %v, want none", tok, err)
		}
		if _, ok, err := s.LastRestart("vm1"); ok || err != nil {
			t.Errorf("LastRestart: got ok %v %v, want none", ok, err)
		}
	})
	t.Run("records round-trip per VM", func(t *testing.T) {
		s := open(t, "vm1", "vm2")
		at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
		restart := vmcore.Restart{At: at, EntryBeforeRestart: "e1", EntryConnectedAt: "c1", EntryProbedAt: at.Add(-time.Minute)}
		for _, err := range []error{
			s.SetAddress("vm1", "10.0.0.7"),
			s.SetJoined("vm1", vmcore.Joined{Revision: "canary", Istio: "1.31.0"}),
			s.SetFiles("vm1", workloadfiles.Files{Token: []byte("tok"), ClusterEnv: []byte("A=1")}),
			s.SetLastRestart("vm1", restart),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		if a, _ := s.Address("vm1"); a != "10.0.0.7" {
			t.Errorf("Address: got %q", a)
		}
		if j, ok, _ := s.Joined("vm1"); !ok || j != (vmcore.Joined{Revision: "canary", Istio: "1.31.0"}) {
			t.Errorf("Joined: got %+v %v", j, ok)
		}
		if tok, _ := s.Token("vm1"); string(tok) != "tok" {
			t.Errorf("Token: got %q", tok)
		}
		if err := s.SetToken("vm1", []byte("renewed")); err != nil {
			t.Fatal(err)
		}
		if tok, _ := s.Token("vm1"); string(tok) != "renewed" {
			t.Errorf("Token after SetToken: got %q", tok)
		}
		if r, ok, _ := s.LastRestart("vm1"); !ok || !r.At.Equal(at) || !r.EntryProbedAt.Equal(restart.EntryProbedAt) || r.EntryBeforeRestart != "e1" || r.EntryConnectedAt != "c1" {
			t.Errorf("LastRestart: got %+v %v", r, ok)
		}
		// Another VM's records are its own.
		if a, _ := s.Address("vm2"); a != "" {
			t.Errorf("vm2's address: got %q, want none", a)
		}
		if h, err := s.AddressHolder("10.0.0.7", "vm2"); h != "vm1" || err != nil {
			t.Errorf("AddressHolder: got %q %v, want vm1", h, err)
		}
		if h, err := s.AddressHolder("10.0.0.7", "vm1"); h != "" || err != nil {
			t.Errorf("AddressHolder except the holder: got %q %v, want none", h, err)
		}
	})
	t.Run("the agent's identity chains to the CA the client pins", func(t *testing.T) {
		s := open(t, "vm1")
		id, err := s.AgentIdentity("vm1", []string{"10.0.0.7"})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := s.AgentTLS("10.0.0.7")
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(id.Cert)
		if block == nil {
			t.Fatalf("agent certificate: no PEM: %q", id.Cert)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.7")) {
			t.Errorf("agent certificate for %v, want 10.0.0.7", cert.IPAddresses)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: cfg.RootCAs}); err != nil {
			t.Errorf("the client does not trust the agent's certificate: %v", err)
		}
		if len(cfg.Certificates) != 1 || len(id.ClientCA) == 0 {
			t.Errorf("client certificates %d, client CA %d bytes: want one certificate the agent pins", len(cfg.Certificates), len(id.ClientCA))
		}
	})
}
