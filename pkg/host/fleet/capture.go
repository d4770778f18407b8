package fleet

import (
	"fmt"
	"strings"
	"time"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// CaptureState is the agent's verdict on the VM's capture rules.
type CaptureState string

const (
	CaptureOK      CaptureState = "ok"
	CaptureFail    CaptureState = "fail"
	CaptureOff     CaptureState = "off"
	CaptureSkipped CaptureState = "skipped"
	// CaptureUnknown: the agent reports no verdict (older than capture.v1).
	CaptureUnknown CaptureState = "unknown"
)

// Capture is the agent's verdict on the traffic capture rules in force:
// where they sit, each path it checked, and Istio's own validation.
type Capture struct {
	State    CaptureState `json:"state"`
	Backends []string     `json:"backends,omitempty"`
	// Detail is the first failed check (or why none ran), else a summary;
	// Fix the next step on the VM.
	Detail     string             `json:"detail,omitempty"`
	Fix        string             `json:"fix,omitempty"`
	Checks     []CaptureCheck     `json:"checks,omitempty"`
	Validation *CaptureValidation `json:"validation,omitempty"`
}

// CaptureCheck is one path the agent checked.
type CaptureCheck struct {
	Name   string       `json:"name"`
	State  CaptureState `json:"state"`
	Detail string       `json:"detail,omitempty"`
	Fix    string       `json:"fix,omitempty"`
}

// CaptureValidation is Istio's validator's outcome at the sidecar's last start.
type CaptureValidation struct {
	RanAt  time.Time `json:"ranAt"`
	Passed bool      `json:"passed"`
	Output string    `json:"output,omitempty"`
}

var captureStates = map[agentv1.CaptureState]CaptureState{
	agentv1.CaptureState_CAPTURE_STATE_OK:      CaptureOK,
	agentv1.CaptureState_CAPTURE_STATE_FAIL:    CaptureFail,
	agentv1.CaptureState_CAPTURE_STATE_OFF:     CaptureOff,
	agentv1.CaptureState_CAPTURE_STATE_SKIPPED: CaptureSkipped,
}

func captureState(s agentv1.CaptureState) CaptureState {
	if c, ok := captureStates[s]; ok {
		return c
	}
	return CaptureUnknown
}

// captureOf reads the agent's verdict; nil from an agent that sent none.
func captureOf(v *agentv1.CaptureVerdict) *Capture {
	if v == nil {
		return nil
	}
	c := &Capture{State: captureState(v.GetState()), Backends: v.GetBackends()}
	passed := 0
	for _, ch := range v.GetChecks() {
		cc := CaptureCheck{Name: ch.GetName(), State: captureState(ch.GetState()), Detail: ch.GetDetail(), Fix: ch.GetFix()}
		c.Checks = append(c.Checks, cc)
		switch {
		case cc.State == CaptureFail && c.Fix == "":
			c.Detail, c.Fix = cc.Name+": "+cc.Detail, cc.Fix
		case cc.State == CaptureOK:
			passed++
		}
	}
	if val := v.GetValidation(); val != nil {
		c.Validation = &CaptureValidation{RanAt: val.GetRanAt().AsTime().UTC(), Passed: val.GetPassed(), Output: val.GetOutput()}
	}
	if c.Detail == "" {
		switch {
		case c.State == CaptureOK:
			c.Detail = fmt.Sprintf("rules in %s only; %d checks as expected", strings.Join(c.Backends, ","), passed)
			if c.Validation != nil && c.Validation.Passed {
				c.Detail += ", Istio's validation passed"
			}
		case len(c.Checks) > 0:
			c.Detail = c.Checks[0].Detail
		}
	}
	return c
}

// column is the verdict in a few words for the status table.
func (c *Capture) column() string {
	if c == nil {
		return ""
	}
	if len(c.Backends) > 0 {
		return string(c.State) + " (" + strings.Join(c.Backends, "+") + ")"
	}
	if c.notApplicable() {
		return "n/a (proxyless)"
	}
	return string(c.State)
}

// notApplicable says the VM has no capture to judge: it runs without Envoy.
func (c *Capture) notApplicable() bool {
	return c.State == CaptureOff && strings.HasPrefix(c.Detail, "not applicable: proxyless")
}
