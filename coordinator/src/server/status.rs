//! The one place where errors become gRPC statuses.

use tonic::Status;

use crate::driver::DriverError;

impl From<DriverError> for Status {
    fn from(e: DriverError) -> Status {
        match &e {
            DriverError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            DriverError::NotFound(_) | DriverError::BranchNotFound { .. } => {
                Status::not_found(e.to_string())
            }
            DriverError::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            DriverError::AlreadyExists(m) => Status::already_exists(m.clone()),
            DriverError::PermissionDenied(m) => Status::permission_denied(m.clone()),
            DriverError::ResourceExhausted(m) => Status::resource_exhausted(m.clone()),
            DriverError::Unavailable(m) => Status::unavailable(m.clone()),
            DriverError::Moved(_) | DriverError::Elsewhere { .. } => {
                Status::unavailable(e.to_string())
            }
            DriverError::DataLoss(m) => Status::data_loss(m.clone()),
            DriverError::Internal(m) => Status::internal(m.clone()),
        }
    }
}
