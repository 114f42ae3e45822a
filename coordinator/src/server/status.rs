//! The one place where errors become gRPC statuses.

use tonic::Status;

use crate::driver::DriverError;

impl From<DriverError> for Status {
    fn from(e: DriverError) -> Status {
        match e {
            DriverError::InvalidArgument(m) => Status::invalid_argument(m),
            DriverError::NotFound(id) => Status::not_found(format!("transaction {id} not found")),
            DriverError::FailedPrecondition(m) => Status::failed_precondition(m),
            DriverError::AlreadyExists(m) => Status::already_exists(m),
            DriverError::Unavailable(m) => Status::unavailable(m),
            DriverError::Internal(m) => Status::internal(m),
        }
    }
}
