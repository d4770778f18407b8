//go:build linux

package agentclient_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// A file another program rewrote in an equivalent form (pilot-agent's root
// certificate with a final newline) is left as it is; any other content is
// replaced.
func TestEquivalentContentIsLeftInPlace(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{})
	c := a.Client(t, a.ClientTLS(t))
	const path = "/etc/certs/root-cert.pem"
	onVM := filepath.Join(a.Root, path)
	ours := []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
	theirs := append(append([]byte{}, ours...), '\n')
	sum := sha256.Sum256(theirs)
	file := agentclient.BytesFile(path, ours)
	file.Equivalent = []string{hex.EncodeToString(sum[:])}
	put := func() bool {
		t.Helper()
		res, err := c.PutFiles(context.Background(), []agentclient.File{file})
		if err != nil || len(res) != 1 {
			t.Fatalf("PutFiles: %v %+v", err, res)
		}
		return res[0].Sent
	}
	if !put() {
		t.Fatal("the first delivery sent nothing")
	}
	if err := os.WriteFile(onVM, theirs, 0o600); err != nil {
		t.Fatal(err)
	}
	if put() {
		t.Error("an equivalent form was replaced")
	}
	if b, _ := os.ReadFile(onVM); string(b) != string(theirs) {
		t.Errorf("the VM's file changed: %q", b)
	}
	if err := os.WriteFile(onVM, []byte("another root"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !put() {
		t.Error("a different root certificate was left in place")
	}
}
