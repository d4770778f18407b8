package statedir

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestCAAndCertificatesPersistAndRenew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".meshvm")
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := d.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	again, err := d.AgentCA()
	if err != nil || !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Fatalf("second AgentCA: got a different CA (%v)", err)
	}
	c1, err := d.ClientCert(ca)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := d.ClientCert(ca)
	if !bytes.Equal(c1.Cert, c2.Cert) {
		t.Error("client certificate reissued although still valid")
	}

	v1, changed, err := d.VMCert(ca, "vm1", []string{"10.213.0.2"})
	if err != nil || !changed {
		t.Fatalf("first VMCert: changed=%v err=%v", changed, err)
	}
	v2, changed, _ := d.VMCert(ca, "vm1", []string{"10.213.0.2"})
	if changed || !bytes.Equal(v1.Cert, v2.Cert) {
		t.Error("VM certificate reissued for the same address")
	}
	_, changed, _ = d.VMCert(ca, "vm1", []string{"10.213.0.6"})
	if !changed {
		t.Error("VM certificate kept although the VM's address changed")
	}

	for _, p := range []string{"agent-ca/ca-key.pem", "agent-ca/hostctl-key.pem", "vms/vm1/agent-key.pem", "vms/vm1/agent.pem"} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", p, err, st.Mode())
		}
	}
	for _, p := range []string{".", "agent-ca", "vms", "vms/vm1"} {
		if st, _ := os.Stat(filepath.Join(dir, p)); st.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", p, st.Mode())
		}
	}

	// A certificate signed by another CA (the CA was replaced) is reissued.
	os.RemoveAll(filepath.Join(dir, "agent-ca"))
	ca2, _ := d.AgentCA()
	_, changed, _ = d.VMCert(ca2, "vm1", []string{"10.213.0.6"})
	if !changed {
		t.Error("VM certificate of the old CA kept")
	}

	os.WriteFile(filepath.Join(dir, "agent-ca/ca-key.pem"), []byte("garbage"), 0o600)
	if _, err := d.AgentCA(); err == nil || !strings.Contains(err.Error(), "re-onboard every VM") {
		t.Errorf("corrupt CA: got %v, want the fix named", err)
	}
}

// VMs onboard concurrently: the first uses of the CA and the client
// certificate, from separate openings of the directory, must agree.
func TestConcurrentFirstUseAgrees(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	cas := make([][]byte, n)
	clients := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := Open(dir)
			if err != nil {
				errs[i] = err
				return
			}
			ca, err := d.AgentCA()
			if err != nil {
				errs[i] = err
				return
			}
			cas[i] = ca.CertPEM()
			p, err := d.ClientCert(ca)
			clients[i], errs[i] = p.Cert, err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(cas[i], cas[0]) || !bytes.Equal(clients[i], clients[0]) {
			t.Fatalf("opener %d got another CA or client certificate than opener 0", i)
		}
	}
}

// A workstation without a CA takes the cluster's; one with its own keeps it.
func TestTakeCAOnlyWhereNone(t *testing.T) {
	first, err := Open(filepath.Join(t.TempDir(), ".meshvm"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := first.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	second, err := Open(filepath.Join(t.TempDir(), ".meshvm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := second.TakeCA([]byte("not a certificate"), key); err == nil {
		t.Error("took a CA that does not load")
	}
	for i, want := range []bool{true, false} {
		if taken, err := second.TakeCA(ca.CertPEM(), key); err != nil || taken != want {
			t.Errorf("take %d: %v %v, want %v", i, taken, err, want)
		}
	}
	if got, err := second.AgentCA(); err != nil || !bytes.Equal(got.CertPEM(), ca.CertPEM()) {
		t.Errorf("the second workstation's CA is not the one taken (%v)", err)
	}
	other, _ := Open(filepath.Join(t.TempDir(), ".meshvm"))
	mine, _ := other.AgentCA()
	if taken, err := other.TakeCA(ca.CertPEM(), key); err != nil || taken {
		t.Errorf("a workstation with its own CA took another: %v %v", taken, err)
	}
	if got, _ := other.AgentCA(); !bytes.Equal(got.CertPEM(), mine.CertPEM()) {
		t.Error("its own CA was replaced")
	}
}
