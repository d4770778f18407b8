package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// ValidationPath is where `vmagent sidecar prepare` records Istio's
// validation: root's directory under /run, so the record lives exactly as
// long as the rules it judged (a reboot drops both).
const ValidationPath = "/run/meshvm/capture-validation.json"

// Validation is the outcome of Istio's validator, run once per sidecar start.
type Validation struct {
	At     time.Time `json:"at"`
	Passed bool      `json:"passed"`
	// Output is the validator's last lines, or why it could not run.
	Output string `json:"output"`
}

// Limits of the validator's run: Istio's probe gives up after 5 s.
const (
	validateTimeout = 20 * time.Second
	maxRecorded     = 2 << 10
)

// validatorInputs are the variables Istio's validator reads (which ports
// it listens on, IPv6); everything else it gets is fixed here.
var validatorInputs = []string{"ENVOY_PORT", "INBOUND_CAPTURE_PORT", "DUAL_STACK", "ISTIO_DUAL_STACK"}

// Validate runs `pilot-agent istio-iptables --skip-rule-apply
// --run-validation` as the proxy user, as Istio's istio-validation init
// container does: it listens on 15001 and 15006 and passes only when a
// connection from 127.0.0.1 to 127.0.0.6:15002 arrives through the
// redirect with its original port. It must run before Envoy binds those
// ports, and as the proxy's uid: root's loopback traffic is exempt, so a
// root run fails. The program runs directly (no shell) with only the
// listed variables from env, no supplementary groups, cwd /, and bounded in
// time and output.
func Validate(ctx context.Context, pilotAgent string, uid, gid int, env map[string]string) Validation {
	start := time.Now()
	extra := func(cmd *exec.Cmd) {
		for _, k := range validatorInputs {
			if v, ok := env[k]; ok {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
		}
	}
	stdout, stderr, err := runBounded(ctx, validateTimeout, extra, pilotAgent, "istio-iptables", "--skip-rule-apply", "--run-validation")
	v := Validation{At: start.UTC().Truncate(time.Second), Passed: err == nil, Output: tail(string(stdout)+"\n"+string(stderr), maxRecorded)}
	if err != nil {
		v.Output = tail(strings.TrimSpace(v.Output+"\n"+err.Error()), maxRecorded)
	}
	return v
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// Save records v atomically, root's and readable by all.
func Save(root *fsroot.Root, v Validation) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dir := fsroot.DirOptions{Mode: 0o755}
	if err := root.WriteBytes(ValidationPath, data, fsroot.WriteOptions{Mode: 0o644, Dir: &dir}); err != nil {
		return fmt.Errorf("record the capture validation: %w", err)
	}
	return nil
}

// Forget removes the record: the rules it judged are gone or being replaced.
func Forget(root *fsroot.Root) error {
	if err := root.Remove(ValidationPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the capture validation record: %w", err)
	}
	return nil
}

// Load reads the record, only if root alone could have written it; ok is
// false when there is none.
func Load(root *fsroot.Root) (Validation, bool, error) {
	data, err := root.ReadTrusted(ValidationPath, 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return Validation{}, false, nil
	}
	if err != nil {
		return Validation{}, false, err
	}
	var v Validation
	if err := json.Unmarshal(data, &v); err != nil {
		return Validation{}, false, fmt.Errorf("read %s: %w", ValidationPath, err)
	}
	return v, true, nil
}

// WithValidation adds the validator's record to the verdict: a failed
// validation fails the verdict; a missing one, while the sidecar runs, is
// a skipped check (an agent older than this one started it).
func (v *Verdict) WithValidation(rec Validation, ok bool, active bool) {
	if ok {
		v.Validation = &rec
	}
	if !active || v.State == Off {
		return
	}
	c := Check{Name: "istio validation"}
	switch {
	case !ok:
		c.State, c.Detail = Skipped, "no record: the sidecar was started before this agent ran Istio's validator; restart it to run it"
	case rec.Passed:
		c.State, c.Detail = OK, "passed at "+rec.At.Format(time.RFC3339)+": "+lastLine([]byte(rec.Output))
	default:
		c.State, c.Detail = Fail, "failed at "+rec.At.Format(time.RFC3339)+": "+lastLine([]byte(rec.Output))
		c.Fix = "a connection from the proxy user did not arrive through the redirect: see the checks above and the istio unit's journal, then restart the sidecar"
		v.State = Fail
	}
	v.Checks = append(v.Checks, c)
}
