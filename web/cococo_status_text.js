// Shows the status text of the pack's output nodes (Release Models, Save Checkpoint, Convert Motion) on the node,
// as the stock frontend does for core 'Preview Any': their executed message carries {"text": [...]}.
import { app } from "../../scripts/app.js";

const STATUS_NODES = new Set(["CoCoCoReleaseModels", "CoCoCoSaveCheckpoint", "CoCoCoConvertMotion"]);
const WIDGET = "cococo_status";

app.registerExtension({
  name: "CoCoCo.StatusText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!STATUS_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget) {
        widget = this.addWidget("text", WIDGET, "", () => {}, { serialize: false });
        widget.serialize = false;
      }
      widget.value = text;
      this.setDirtyCanvas?.(true, true);
    };
  },
});
