package vmctl

import (
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
)

// crdTypes maps the core's condition types onto the MeshVM's where their
// names differ; the others are carried under the core's names.
var crdTypes = map[vmcore.ConditionType]string{vmcore.Credentials: v1alpha1.ConditionCredentialsValid}

func crdType(t vmcore.ConditionType) string {
	if s, ok := crdTypes[t]; ok {
		return s
	}
	return string(t)
}

// coreTypes are the conditions the core owns, by their MeshVM names.
var coreTypes = func() map[string]vmcore.ConditionType {
	m := map[string]vmcore.ConditionType{}
	for _, t := range []vmcore.ConditionType{vmcore.Machine, vmcore.App, vmcore.AgentReachable, vmcore.Credentials, vmcore.FilesInSync,
		vmcore.SidecarRunning, vmcore.Registered, vmcore.Healthy, vmcore.AddressMoved, vmcore.Ready} {
		m[crdType(t)] = t
	}
	return m
}()

// coreStatus is the last status as the core carries it between passes.
func coreStatus(st v1alpha1.MeshVMStatus) vmcore.Status {
	var cs vmcore.Status
	for _, c := range st.Conditions {
		t, ok := coreTypes[c.Type]
		if !ok {
			continue
		}
		cs.Conditions = append(cs.Conditions, vmcore.Condition{Type: t, Status: vmcore.ConditionStatus(c.Status), Reason: vmcore.Reason(c.Reason),
			Message: c.Message, ObservedGeneration: c.ObservedGeneration, LastTransitionTime: c.LastTransitionTime.Time})
	}
	cs.Address, cs.Revision, cs.Istio = st.Address, st.Revision, st.ProxyVersion
	return cs
}

// applyCore records a pass's conditions and findings on the MeshVM's status.
func applyCore(st *v1alpha1.MeshVMStatus, cs vmcore.Status) {
	for _, c := range cs.Conditions {
		setCondition(st, metav1.Condition{Type: crdType(c.Type), Status: metav1.ConditionStatus(c.Status), Reason: string(c.Reason),
			Message: c.Message, ObservedGeneration: c.ObservedGeneration, LastTransitionTime: metav1.NewTime(c.LastTransitionTime)})
	}
	if cs.Address != "" {
		st.Address = cs.Address
	}
	if cs.Revision != "" || cs.Istio != "" {
		st.Revision, st.ProxyVersion = revisionName(cs.Revision), cs.Istio
	}
	if c, ok := cs.Conditions.Get(vmcore.AgentReachable); ok && c.Status != vmcore.True {
		st.Agent = "unreachable"
	}
	if c, ok := cs.Conditions.Get(vmcore.SidecarRunning); ok {
		st.Sidecar = "active"
		if c.Status != vmcore.True {
			st.Sidecar = c.Message
		}
	}
	if _, ok := cs.Conditions.Get(vmcore.Registered); ok {
		st.Healthy = cs.Entry.Healthy
		if st.Healthy == "" {
			st.Healthy = "Unknown"
		}
	}
}

// setCondition sets c, its transition time kept while its status holds;
// times are whole seconds, as the API server keeps them, so an unchanged
// condition compares equal to the one read back.
func setCondition(st *v1alpha1.MeshVMStatus, c metav1.Condition) {
	if c.LastTransitionTime.IsZero() {
		c.LastTransitionTime = metav1.Now()
	}
	c.LastTransitionTime = metav1.NewTime(c.LastTransitionTime.Truncate(time.Second))
	meta.SetStatusCondition(&st.Conditions, c)
}

func revisionName(rev string) string {
	if rev == "" {
		return "default"
	}
	return rev
}
