package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/credcheck"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// TestCredentialsOnLab runs three VMs with one-minute workload certificates
// (the config's floor; pilot-agent renews at half-life) through what strands
// VMs with Istio's defaults, all in one wait of a certificate's lifetime:
//   - cr1's token is replaced by vm onboard and vm renew --force with no
//     sidecar restart; then it is stopped past its certificate's end and
//     started: it is Healthy again with a certificate istiod issued after
//     the stop, no hostctl command between, with the token the rotation
//     left in the root-only copy;
//   - cr2 is revoked: the API server refuses its token and istiod issues it
//     no certificate after that; status and doctor say revoked;
//   - cr3 loses its token and its certificate lapses: status and doctor say
//     stranded and exit non-zero; vm onboard brings it back, and cr2 too.
func TestCredentialsOnLab(t *testing.T) {
	_, _, cfgPath, state := labSetup(t, "cr1", "cr2", "cr3")
	fleetOff(t, cfgPath) // what strands a VM without fleet mode
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("workload:\n  certificateLifetime: 1m\n")
	f.Close()
	if out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	ctx := context.Background()
	lab := labVMs(state)
	clients, err := fleet.KubeClients(filepath.Join(state, "lab", "cluster", "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	status := func(vm string) (fleet.VMStatus, string, error) {
		t.Helper()
		out, err := run(t, "--config", cfgPath, "vm", "status", vm, "-o", "json")
		var s []fleet.VMStatus
		if jerr := json.NewDecoder(strings.NewReader(jsonPart(out))).Decode(&s); jerr != nil || len(s) != 1 {
			t.Fatalf("vm status %s -o json: %v %v\n%s", vm, err, jerr, out)
		}
		return s[0], out, err
	}
	sha := func(vm, path string) string {
		out, _ := lab.Exec(ctx, vm, nil, "sh", "-c", "sha256sum "+path+" | cut -c1-64")
		return strings.TrimSpace(string(out))
	}
	const tokenPath, tokenCopy = "/var/run/secrets/tokens/istio-token", "/var/lib/meshvm/secrets/istio-token"

	before := map[string]fleet.VMStatus{}
	for _, vm := range []string{"cr1", "cr2", "cr3"} {
		s, out, err := status(vm)
		if err != nil || !s.OK || s.Credentials != credcheck.OK || s.CertNotAfter == nil || s.TokenExpiresAt == nil || s.TokenIssuedAt == nil {
			t.Fatalf("%s after up: %v\n%s", vm, err, out)
		}
		// SECRET_TTL reached pilot-agent: the certificate lasts a minute, not 24 h.
		if left := time.Until(*s.CertNotAfter); left > 70*time.Second {
			t.Errorf("%s: certificate valid %s more, want at most the 1m asked for", vm, left)
		}
		// The token lasts the configured 30 days (the lab's API server allows 90).
		if life := s.TokenExpiresAt.Sub(*s.TokenIssuedAt); life < 719*time.Hour {
			t.Errorf("%s: token lifetime %s, want 720h", vm, life)
		}
		before[vm] = s
	}

	// cr1: vm onboard and vm renew replace the token without a restart,
	// and the root-only copy the agent restores at boot follows.
	pid := func() string {
		out, _ := lab.Exec(ctx, "cr1", nil, "systemctl", "show", "-p", "MainPID", "--value", "istio.service")
		return strings.TrimSpace(string(out))
	}
	sidecarPID, first := pid(), sha("cr1", tokenPath)
	if out, err := run(t, "--config", cfgPath, "vm", "onboard", "cr1"); err != nil || strings.Contains(out, "(restarted)") {
		t.Fatalf("vm onboard cr1: %v\n%s", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "vm", "renew", "cr1"); err != nil || !strings.Contains(out, "vm renew cr1: token kept") {
		t.Errorf("vm renew of a fresh token: %v\n%s\nwant it kept", err, out)
	}
	onboarded := sha("cr1", tokenPath)
	if out, err := run(t, "--config", cfgPath, "vm", "renew", "--force", "cr1"); err != nil || !strings.Contains(out, "new token valid until") {
		t.Fatalf("vm renew --force cr1: %v\n%s", err, out)
	}
	rotated := sha("cr1", tokenPath)
	if first == onboarded || onboarded == rotated {
		t.Errorf("cr1's token did not change with vm onboard and vm renew --force: %s, %s, %s", first, onboarded, rotated)
	}
	if got := sha("cr1", tokenCopy); got != rotated || rotated == "" {
		t.Errorf("cr1: the root-only token copy %q is not the rotated token %q", got, rotated)
	}
	if now := pid(); now != sidecarPID {
		t.Errorf("cr1's sidecar restarted (pid %s -> %s) for a new token", sidecarPID, now)
	}
	stoppedAt := time.Now()
	if out, err := run(t, "--config", cfgPath, "vm", "stop", "cr1"); err != nil {
		t.Fatalf("vm stop cr1: %v\n%s", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "vm", "revoke", "cr2"); err != nil || !strings.Contains(out, "Secret vmns/meshvm-cr2 deleted") {
		t.Fatalf("vm revoke cr2: %v\n%s", err, out)
	}
	cr2Token, err := os.ReadFile(filepath.Join(state, "vms", "cr2", "files", "istio-token"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := lab.Exec(ctx, "cr3", nil, "rm", tokenPath, tokenCopy); err != nil {
		t.Fatalf("cr3: remove the token: %v %s", err, out)
	}

	// The API server refuses a revoked token once its cached review of it
	// lapses (10 s).
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := workload.Review(ctx, clients.Kube, cr2Token)
		if err == nil && !r.Authenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cr2's token still accepted 30 s after vm revoke: %+v %v", r, err)
		}
		time.Sleep(time.Second)
	}
	// The last certificate cr2 can have was issued before that; whatever
	// it holds now ends within a lifetime. Wait out every certificate there
	// is, plus a renewal period.
	cr2, _, _ := status("cr2")
	until := stoppedAt.Add(70 * time.Second)
	for _, s := range []fleet.VMStatus{before["cr1"], before["cr3"], cr2} {
		if s.CertNotAfter != nil && s.CertNotAfter.Add(30*time.Second).After(until) {
			until = s.CertNotAfter.Add(30 * time.Second)
		}
	}
	t.Logf("waiting %s for the certificates to lapse", time.Until(until).Round(time.Second))
	time.Sleep(time.Until(until))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, err := run(t, "--config", cfgPath, "vm", "start", "cr1")
		if err != nil {
			t.Errorf("vm start cr1 after its certificate lapsed: %v\n%s", err, out)
			return
		}
		s, out, err := status("cr1")
		if err != nil || !s.OK || s.Credentials != credcheck.OK || s.CertRenewBy == nil || s.CertNotAfter == nil || !s.CertNotAfter.After(stoppedAt.Add(70*time.Second)) {
			t.Errorf("cr1 after start: %v, want Healthy with a certificate issued after the stop\n%s", err, out)
		}
		if got := sha("cr1", tokenPath); got != rotated {
			t.Errorf("cr1 booted with token %s, want the rotated %s", got, rotated)
		}
	}()

	s, out, err := status("cr2")
	if err == nil || s.OK || s.Credentials != credcheck.Revoked || !strings.Contains(s.CredentialsDetail, "vmns/meshvm-cr2") || !strings.Contains(err.Error(), "hostctl vm onboard cr2") {
		t.Errorf("vm status of a revoked VM: %v\n%s\nwant revoked, named with its Secret and fix, and a non-zero exit", err, out)
	}
	if s.CertNotAfter != nil && cr2.CertNotAfter != nil && s.CertNotAfter.After(*cr2.CertNotAfter) {
		t.Errorf("cr2 got a certificate after its token was revoked (valid until %s, was %s)", s.CertNotAfter, cr2.CertNotAfter)
	}
	s, out, err = status("cr3")
	if err == nil || s.OK || s.Credentials != credcheck.Stranded || !strings.Contains(s.CredentialsDetail, "no istio-token") || !strings.Contains(s.CredentialsDetail, "the certificate expired at") {
		t.Errorf("vm status of a VM with no token and a lapsed certificate: %v\n%s\nwant stranded, its cause in words, a non-zero exit", err, out)
	}
	out, err = run(t, "--config", cfgPath, "doctor", "-o", "json")
	var findings []fleet.Finding
	json.NewDecoder(strings.NewReader(jsonPart(out))).Decode(&findings)
	said := map[string]fleet.Finding{}
	for _, f := range findings {
		if f.Check == "credentials" {
			said[f.Scope] = f
		}
	}
	if err == nil || said["cr2"].Result != "fail" || !strings.HasPrefix(said["cr2"].Detail, "revoked: ") ||
		said["cr3"].Result != "fail" || !strings.HasPrefix(said["cr3"].Detail, "stranded: ") || !strings.Contains(said["cr3"].Fix, "hostctl vm onboard cr3") {
		t.Errorf("doctor: %v\n%s\nwant cr2 revoked and cr3 stranded, each a failure with its fix", err, out)
	}
	wg.Wait()

	// The fix named: a new token bound to a new Secret brings both back.
	if out, err := run(t, "--config", cfgPath, "vm", "onboard", "cr2", "cr3"); err != nil {
		t.Fatalf("vm onboard cr2 cr3: %v\n%s", err, out)
	}
	// pilot-agent retries with the new token on its own schedule: give it
	// a renewal period.
	for _, vm := range []string{"cr2", "cr3"} {
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(2 * time.Second) {
			s, out, err := status(vm)
			if err == nil && s.OK && s.Credentials == credcheck.OK {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s 90 s after vm onboard: %v\n%s", vm, err, out)
				break
			}
		}
	}
}

// jsonPart is the JSON document in a command's output, which also holds
// what it wrote to stderr (a warning before, the error after).
func jsonPart(out string) string {
	if i := strings.Index(out, "\n["); i >= 0 && !strings.HasPrefix(out, "[") {
		return out[i+1:]
	}
	return out
}
