// Package vmcore converges one VM into the mesh, as a reconciler does:
// each pass observes, acts where the VM differs from what it should be,
// records conditions with typed reasons and returns with a requeue hint. It
// never waits for the world (Healthy, an agent starting): its driver does,
// between passes. hostctl drives it from a terminal; a controller can drive
// the same passes, which is why nothing here knows cobra, the lab or a
// controller framework, and nothing here says "run hostctl ...": advice is
// chosen from the reasons by the driver.
package vmcore

import (
	"slices"
	"time"
)

// ConditionType names one fact about the VM; each step owns one.
type ConditionType string

const (
	Machine        ConditionType = "Machine"
	App            ConditionType = "App"
	AgentReachable ConditionType = "AgentReachable"
	Credentials    ConditionType = "Credentials"
	FilesInSync    ConditionType = "FilesInSync"
	SidecarRunning ConditionType = "SidecarRunning"
	Registered     ConditionType = "Registered"
	Healthy        ConditionType = "Healthy"
	AddressMoved   ConditionType = "AddressMoved"
	// Ready sums the others up: True once the VM is in the mesh, else the
	// first step's condition that is not (cluster-api's summary).
	Ready ConditionType = "Ready"
)

// ConditionStatus is True, False or Unknown, as Kubernetes conditions say it.
type ConditionStatus string

const (
	True    ConditionStatus = "True"
	False   ConditionStatus = "False"
	Unknown ConditionStatus = "Unknown"
)

// Reason says why a condition has its status, in one CamelCase word a
// program can switch on.
type Reason string

const (
	// Machine
	MachineRunning    Reason = "Running"
	MachineNotFound   Reason = "NotFound"
	MachineNotRunning Reason = "NotRunning"
	MachineNoAddress  Reason = "NoAddress"
	// App
	AppServing    Reason = "Serving"
	AppOwn        Reason = "OwnApp"
	AppOwnRemoved Reason = "OwnAppMeshvmsRemoved"
	AppNotManaged Reason = "NotManaged"
	AppFailed     Reason = "ConvergeFailed"
	// AgentReachable
	AgentAnswering   Reason = "Answering"
	AgentUnreachable Reason = "Unreachable"
	// Credentials
	TokenBound       Reason = "TokenBound"
	FilesUnavailable Reason = "FilesUnavailable"
	// CertificateExpired: the certificate pilot-agent holds has lapsed.
	CertificateExpired Reason = "CertificateExpired"
	// FilesInSync
	FilesSent    Reason = "Sent"
	FilesInPlace Reason = "InPlace"
	// FilesKept: the files are as the VM's last onboarding left them and
	// are not looked at (Spec.KeepFiles); so is its token.
	FilesKept   Reason = "Kept"
	FilesFailed Reason = "DeliveryFailed"
	// SidecarRunning
	SidecarStarted   Reason = "Started"
	SidecarRestarted Reason = "Restarted"
	SidecarFailed    Reason = "StartFailed"
	// Registered and Healthy
	NoEntry         Reason = "NoWorkloadEntry"
	NotReconnected  Reason = "NotReconnected"
	EntryRegistered Reason = "Registered"
	EntryHealthy    Reason = "Healthy"
	EntryNotHealthy Reason = "NotHealthy"
	WaitsOnOwnApp   Reason = "WaitsOnOwnApp"
	// WaitsOnGRPCApp: a proxyless VM registers only while its app is connected.
	WaitsOnGRPCApp   Reason = "WaitsOnGRPCApp"
	EntryUnavailable Reason = "EntryUnavailable"
	// AddressMoved
	AddressUnchanged  Reason = "Unchanged"
	NothingLeft       Reason = "NothingLeft"
	AddressFirst      Reason = "FirstAddress"
	StaleEntryDeleted Reason = "StaleEntryDeleted"
	AddressHeld       Reason = "OldAddressHeld"
	// Ready
	InMesh         Reason = "InMesh"
	ReconcileError Reason = "ReconcileError"
	// Any condition whose step has not run yet.
	NotObserved Reason = "NotObserved"
)

// Condition is one observed fact, shaped as a Kubernetes status condition so
// that a custom resource's status can carry it as it is.
type Condition struct {
	Type    ConditionType
	Status  ConditionStatus
	Reason  Reason
	Message string
	// ObservedGeneration is the Spec's Generation the condition was set for.
	ObservedGeneration int64
	// LastTransitionTime changes only when Status does.
	LastTransitionTime time.Time
}

// Conditions are a VM's conditions, at most one per type.
type Conditions []Condition

// Get returns the condition of type t; ok is false when none was set.
func (cs Conditions) Get(t ConditionType) (Condition, bool) {
	i := slices.IndexFunc(cs, func(c Condition) bool { return c.Type == t })
	if i < 0 {
		return Condition{Type: t, Status: Unknown, Reason: NotObserved}, false
	}
	return cs[i], true
}

// IsTrue says whether condition t is True.
func (cs Conditions) IsTrue(t ConditionType) bool {
	c, _ := cs.Get(t)
	return c.Status == True
}

// Set records c, keeping the previous LastTransitionTime when the status
// did not change (a controller writes status only when it changes).
func (cs *Conditions) Set(c Condition, now time.Time) {
	i := slices.IndexFunc(*cs, func(old Condition) bool { return old.Type == c.Type })
	c.LastTransitionTime = now
	if i < 0 {
		*cs = append(*cs, c)
		return
	}
	if (*cs)[i].Status == c.Status {
		c.LastTransitionTime = (*cs)[i].LastTransitionTime
	}
	(*cs)[i] = c
}
