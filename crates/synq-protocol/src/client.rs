//! The client→reflector actions' arguments, under the names the reflector has always
//! imported. Each action lives in its own module of [`crate::action`], with both the
//! reflector's parser and the clients' encoder.

pub use crate::action::{
    ArgsError, JoinArgs, JoinRequest, JoinUser, MessageTail, SaveArgs, SaveRequest, SendArgs,
    SendRequest, SendTags, SnapArgs, SnapRequest, TickConfig, TicksRequest, TuttiArgs,
    TuttiRequest, truthy,
};
