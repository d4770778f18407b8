package fleet

import (
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// The agent's verdict reaches status, doctor and verify with the failed
// check and its fix, and the command where the fix is a restart.
func TestCaptureVerdictEverywhere(t *testing.T) {
	both := &agentv1.CaptureVerdict{
		State:    agentv1.CaptureState_CAPTURE_STATE_FAIL,
		Backends: []string{"iptables-legacy", "iptables-nft"},
		Checks: []*agentv1.CaptureCheck{
			{Name: "backend", State: agentv1.CaptureState_CAPTURE_STATE_FAIL, Detail: "capture rules are installed in both iptables-legacy (IPv4) and iptables-nft (IPv4)",
				Fix: "restart the sidecar: vmagent's cleanup removes the rules from both backends before installing them in one"},
			{Name: "inbound :8000 -> 15006", State: agentv1.CaptureState_CAPTURE_STATE_OK, Detail: "redirected to 15006"},
		},
	}
	good := &agentv1.CaptureVerdict{
		State:    agentv1.CaptureState_CAPTURE_STATE_OK,
		Backends: []string{"iptables-legacy"},
		Checks: []*agentv1.CaptureCheck{
			{Name: "backend", State: agentv1.CaptureState_CAPTURE_STATE_OK},
			{Name: "dns", State: agentv1.CaptureState_CAPTURE_STATE_SKIPPED, Detail: "DNS capture is off"},
			{Name: "istio validation", State: agentv1.CaptureState_CAPTURE_STATE_OK},
		},
		Validation: &agentv1.CaptureValidation{Passed: true, Output: "Validation passed"},
	}
	cfg := config.Default()
	healthy := VMStatus{WorkloadEntry: "e", Healthy: "True"}

	c := captureOf(both)
	healthy.Capture = c
	if got := healthy.CaptureSummary(); got != "fail (iptables-legacy+iptables-nft)" {
		t.Errorf("status column: got %q", got)
	}
	ok, next, cause := judge(cfg, cfg.VMs[0], healthy, "active")
	if ok || !strings.Contains(next, "capture rules: backend: capture rules are installed in both iptables-legacy") ||
		cause.Reason != reason.CaptureRestart || cause.Args[0] != "vm1" {
		t.Errorf("status: got %v %q, want not ok naming both backends and the restart", ok, next)
	}
	if f := captureFinding("vm1", c); f.Result != "fail" || !strings.Contains(f.Detail, "both iptables-legacy") || f.Reason != reason.CaptureRestart {
		t.Errorf("doctor: got %+v", f)
	}

	c = captureOf(good)
	healthy.Capture = c
	if ok, next, _ := judge(cfg, cfg.VMs[0], healthy, "active"); !ok || next != "" {
		t.Errorf("status with good capture: got %v %q", ok, next)
	}
	if f := captureFinding("vm1", c); f.Result != "ok" || f.Detail != "rules in iptables-legacy only; 2 checks as expected, Istio's validation passed" {
		t.Errorf("doctor with good capture: got %+v", f)
	}
	// An agent without the verdict warns in doctor and leaves status alone.
	healthy.Capture = captureOf(nil)
	if ok, _, _ := judge(cfg, cfg.VMs[0], healthy, "active"); !ok || healthy.CaptureSummary() != "" {
		t.Errorf("status from an older agent: got %v %q", ok, healthy.CaptureSummary())
	}
	if f := captureFinding("vm1", nil); f.Result != "warn" || f.Reason != reason.AgentOutdated {
		t.Errorf("doctor from an older agent: got %+v", f)
	}
}
